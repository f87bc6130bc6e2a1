"""Read CT volumes from NIfTI, NRRD, MetaImage or a DICOM series folder; write NIfTI like a reference.

Every reader returns a :class:`~sam2_3dmed.data.io.Volume`: data in nibabel index order
``(i, j, k)`` and an affine mapping voxel indices to world **RAS** millimetres, exactly what
:func:`~sam2_3dmed.data.io.load_nifti` gives. Unusable input fails with a one-line
:class:`~sam2_3dmed.errors.InputFileError` naming the file.

LPS/RAS: ITK (NRRD, MetaImage, DICOM) stores geometry in **LPS** world coordinates::

    world_LPS = origin + D @ diag(spacing) @ (i, j, k)

with ``D`` the 3x3 direction matrix (row-major in SimpleITK's flat tuple), while
``sitk.GetArrayFromImage`` returns the array as ``(k, j, i)``. RAS and LPS differ only by the
signs of x and y, so with ``F = diag(-1, -1, 1)`` the RAS affine is
``A[:3, :3] = F @ D @ diag(spacing)`` and ``A[:3, 3] = F @ origin``; the writers invert this
(spacing = column norms of ``F @ A[:3, :3]``, ``D`` = those columns normalised).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import locale
import os
import re
import tempfile
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_file, ensure_dir
from ..errors import InputFileError
from .io import Volume, _short, load_nifti


class _LazySimpleITK:
    """SimpleITK, imported on first use: only NRRD, MetaImage and DICOM need it (NIfTI is read
    and written with nibabel), so training and predicting NIfTI also run where it is not
    installed (a GPU node given only the packages that the NIfTI path needs)."""

    def __getattr__(self, name):
        try:
            import SimpleITK
        except ImportError as exc:
            raise ModuleNotFoundError("SimpleITK is needed to read and write NRRD, MetaImage and DICOM "
                                      "(pip install SimpleITK)", name="SimpleITK") from exc
        globals()["sitk"] = SimpleITK  # later look-ups go straight to the module
        return getattr(SimpleITK, name)


sitk = _LazySimpleITK()

SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder"
_SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS, its own inverse
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _keep_locale(fn):
    """GDCM (DICOM via SimpleITK) switches the process locale to "C", which turns Python's
    default text encoding into ASCII for the rest of the process; put it back."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        saved = locale.setlocale(locale.LC_ALL)
        try:
            return fn(*args, **kwargs)
        finally:
            with contextlib.suppress(locale.Error):
                locale.setlocale(locale.LC_ALL, saved)
    return wrapper


@_keep_locale
def read_image(path: str | Path, series_id: str | None = None) -> Volume:
    """Read a 3D image file or DICOM series folder as a float32 RAS :class:`Volume`."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return _read_dicom(path, series_id)
    if not path.is_file():
        raise InputFileError(f"does not exist; expected {SUPPORTED}", path)
    if name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    if name.endswith(_SITK_SUFFIXES):
        return _from_sitk(_sitk_call(sitk.ReadImage, path, str(path)), path)
    hint = "; pass the folder holding the DICOM series" if name.endswith(".dcm") else ""
    raise InputFileError(f"unsupported file type{hint}; expected {SUPPORTED}", path)


def _itk_message(exc: RuntimeError, path: Path) -> str:
    """The cause in an ITK exception: the innermost '[nrrd]' line, else the first line of ITK's own text."""
    text = str(exc)
    if "Unable to determine ImageIO reader" in text:
        return "unrecognised contents"
    nrrd = re.findall(r"^\[nrrd\] \w+:(.*\S.*)$", text, flags=re.M)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Exception thrown in")]
    text = nrrd[-1] if nrrd else re.sub(r"^.*?ERROR: (\w+\(0x[0-9a-f]+\): )?", "", lines[0] if lines else "")
    return _short(RuntimeError(text.replace(str(path), path.name).replace('""', "")))


@contextlib.contextmanager
def _quiet_itk():
    """Silence ITK's stderr warnings (we report problems ourselves, as one line)."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _sitk_call(fn, path: Path, *args):
    with _quiet_itk():
        try:
            return fn(*args)
        except RuntimeError as exc:
            raise InputFileError(f"cannot read ({_itk_message(exc, path)})", path) from None


def _from_sitk(img: sitk.Image, path: Path) -> Volume:
    """Convert a SimpleITK image to a RAS :class:`Volume`, refusing anything but a finite 3D scalar image."""
    size = img.GetSize()
    if img.GetNumberOfComponentsPerPixel() > 1:
        n = img.GetNumberOfComponentsPerPixel()
        raise InputFileError(f"has {n} components per voxel (vector/RGB); expected a scalar image", path)
    if len(size) == 4 and size[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise InputFileError(f"expected a 3D volume, got {len(size)}D with size {size}", path)
    arr = sitk.GetArrayFromImage(img)
    if np.iscomplexobj(arr):
        raise InputFileError("has complex voxels; expected a real-valued scalar image", path)
    data = np.ascontiguousarray(arr.transpose(2, 1, 0), dtype=np.float32)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = _LPS @ np.asarray(img.GetOrigin(), dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputFileError("direction/spacing is singular or not finite", path)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputFileError(f"contains {bad} NaN/inf voxels", path)
    return Volume(data, affine, path)


def _read_dicom(folder: Path, series_id: str | None) -> Volume:
    with _quiet_itk():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputFileError(f"no DICOM series found in this folder; expected {SUPPORTED}", folder)
    if series_id is None and len(ids) > 1:
        raise InputFileError(
            f"holds {len(ids)} DICOM series ({', '.join(ids)}); pass --series-id to choose one", folder
        )
    if series_id is not None and series_id not in ids:
        raise InputFileError(f"no DICOM series {series_id!r} here; found: {', '.join(ids)}", folder)
    with _quiet_itk():
        series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids}
    # GDCM silently leaves out files it cannot parse: a truncated slice would vanish from the volume
    listed = {os.path.realpath(f) for files in series.values() for f in files}
    for f in sorted(folder.iterdir()):
        if f.is_file() and os.path.realpath(f) not in listed and f.name.upper() != "DICOMDIR" and _is_dicom(f):
            raise InputFileError("DICOM file that no series could read (truncated or corrupt?)", f)
    files = _sorted_slices(folder, series[series_id or ids[0]])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return _from_sitk(_sitk_call(reader.Execute, folder), folder)


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def _sorted_slices(folder: Path, files) -> list[str]:
    """Sort slice files along the slice normal; refuse uneven spacing, duplicates and tilted stacks."""
    if len(files) < 2:
        raise InputFileError(f"DICOM series has {len(files)} slice; a volume needs at least 2", folder)
    pos, orient = [], []
    reader = sitk.ImageFileReader()
    for f in files:
        reader.SetFileName(f)
        _sitk_call(reader.ReadImageInformation, Path(f))
        pos.append(_floats(reader, "0020|0032", 3, f))
        orient.append(_floats(reader, "0020|0037", 6, f) + list(reader.GetSize()))
    orient = np.asarray(orient)
    if np.abs(orient - orient[0]).max() > 1e-4:
        raise InputFileError("DICOM slices differ in orientation or size (a localizer in the series?)", folder)
    orient = orient[0, :6]
    normal = np.cross(orient[:3], orient[3:])
    pos = np.asarray(pos)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    steps = np.diff(pos, axis=0)
    gaps = np.linalg.norm(steps, axis=1)
    if gaps.min() < 1e-3:
        raise InputFileError("DICOM series has several slices at the same position", folder)
    if gaps.max() - gaps.min() > 0.01 * np.median(gaps) + 1e-4:
        gap_range = f"{gaps.min():.4g} to {gaps.max():.4g} mm"
        raise InputFileError(f"DICOM slices are unevenly spaced ({gap_range} apart; missing slices?)", folder)
    if np.abs(steps @ normal / gaps).min() < 1 - 1e-4:
        raise InputFileError("DICOM slice positions are not along the slice normal (gantry tilt?)", folder)
    return [files[i] for i in order]


def _floats(reader: sitk.ImageFileReader, tag: str, n: int, f: str) -> list[float]:
    try:
        values = [float(v) for v in reader.GetMetaData(tag).split("\\")]
    except (RuntimeError, ValueError):
        values = []
    if len(values) != n or not np.all(np.isfinite(values)):
        raise InputFileError(f"missing or invalid DICOM tag {tag} (ImagePosition/OrientationPatient)", f)
    return values


def write_nifti_like(data_ijk: np.ndarray, ref: Volume, path: str | Path, dtype=np.uint8,
                     slope: float | None = None) -> Path:
    """Write ``data_ijk`` as NIfTI (.nii or .nii.gz) with ``ref``'s shape and affine (sform and qform).

    Float data is rounded for an integer ``dtype``. The file appears all at once (written
    beside it, then renamed). Raises ValueError for a shape mismatch or values that ``dtype``
    cannot hold, before anything is written.
    """
    path = Path(path)
    data = np.asarray(data_ijk)
    if data.shape != ref.data.shape:
        raise ValueError(f"data shape {data.shape} differs from the reference {ref.data.shape} ({ref.path})")
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: output must end in .nii or .nii.gz")
    if np.issubdtype(dtype, np.integer) and data.size:
        data = np.rint(data) if np.issubdtype(data.dtype, np.floating) else data
        info = np.iinfo(dtype)
        if not info.min <= data.min() <= data.max() <= info.max:  # also refuses NaN
            raise ValueError(f"values {data.min()}..{data.max()} do not fit {np.dtype(dtype).name}")
    img = nib.Nifti1Image(data.astype(dtype), ref.affine)
    if slope is not None:  # stored values x slope = what readers return (scl_slope, scl_inter 0)
        img.header.set_slope_inter(slope, 0.0)
    img.set_sform(ref.affine, code=1)
    img.set_qform(ref.affine, code=1)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    with atomic_file(path) as tmp:
        tmp.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0) if path.name.endswith(".gz") else raw)
    return path


#: probability files: p stored as round(255 p) in uint8 with scl_slope 1/255, so nibabel's
#: get_fdata() and SimpleITK return p in [0, 1] (to within 1/510); 1 byte per voxel
PROBABILITY_LEVELS = 255


def write_probability_like(prob_ijk: np.ndarray, ref: Volume, path: str | Path) -> Path:
    """Write foreground probabilities in [0, 1] as a compact NIfTI on ``ref``'s grid
    (uint8, scale 1/255 in the header: see :data:`PROBABILITY_LEVELS`)."""
    q = np.empty(np.shape(prob_ijk), dtype=np.uint8)
    np.rint(np.clip(np.asarray(prob_ijk, dtype=np.float32) * PROBABILITY_LEVELS, 0, PROBABILITY_LEVELS), out=q,
            casting="unsafe")
    return write_nifti_like(q, ref, path, np.uint8, slope=1.0 / PROBABILITY_LEVELS)


def _lps_geometry(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, spacing, direction) in LPS for a RAS voxel->world affine."""
    m = _LPS @ np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    return _LPS @ np.asarray(affine_ras, dtype=np.float64)[:3, 3], spacing, m / spacing


@_keep_locale
def write_sitk(data_ijk: np.ndarray, affine_ras: np.ndarray, path: str | Path, compress: bool = True) -> Path:
    """Write ``data_ijk`` with a RAS affine as NRRD/MetaImage (format from the suffix) via SimpleITK.

    Arrays that are not 3D are written without geometry (only for tests of the readers' checks).
    """
    path = Path(path)
    data = np.asarray(data_ijk)
    data = data.astype(np.uint8) if data.dtype == bool else data
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)  # (i, j, k) -> sitk's (k, j, i)
    if data.ndim == 3:
        origin, spacing, direction = _lps_geometry(affine_ras)
        img.SetOrigin(origin.tolist())
        img.SetSpacing(spacing.tolist())
        img.SetDirection(direction.ravel().tolist())
    ensure_dir(path.parent)
    # write in a temporary sibling folder then move: no half-written file under the final name
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.tmp-", dir=path.parent) as tmp:
        sitk.WriteImage(img, str(Path(tmp) / path.name), useCompression=compress)
        for f in sorted(Path(tmp).iterdir(), key=lambda p: p.name == path.name):  # header last
            os.replace(f, path.parent / f.name)
    return path


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _ds(values) -> str:
    """DICOM decimal strings (at most 16 characters each), backslash-separated."""
    return "\\".join(f"{float(v):.10g}" for v in values)


@_keep_locale
def write_dicom_series(
    data_ijk: np.ndarray,
    affine_ras: np.ndarray,
    folder: str | Path,
    series_uid: str | None = None,
    description: str = "sam2-3dmed",
) -> list[Path]:
    """Write a CT DICOM series, one int16 file per k slice; return the files in k order.

    Row direction (ImageOrientationPatient) is the LPS i axis, column direction the j axis;
    each slice's ImagePositionPatient is the LPS world position of voxel (0, 0, k). DICOM
    readers stack slices along row x column, so for a left-handed affine they return the
    same geometry with k reversed. Files are named ``<series uid tail>_<k>.dcm``, so
    several series can share a folder.
    """
    data = np.asarray(data_ijk)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {data.shape}")
    vals = np.rint(data)
    if data.size and not -32768 <= vals.min() <= vals.max() <= 32767:  # also refuses NaN
        raise ValueError(f"values {vals.min()}..{vals.max()} do not fit int16")
    origin, spacing, d = _lps_geometry(affine_ras)
    normal = np.cross(d[:, 0], d[:, 1])
    if abs(d[:, 0] @ d[:, 1]) > 1e-6 or abs(abs(normal @ d[:, 2]) - 1) > 1e-6:
        raise ValueError("a DICOM series needs an affine without shear")
    folder = Path(folder)
    ensure_dir(folder)
    series_uid = series_uid or _uid()
    common = {
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0016": _CT_STORAGE,
        "0008|0060": "CT",
        "0008|103e": description,
        "0010|0010": "anonymous",
        "0010|0020": "anonymous",
        "0020|000d": _uid(),
        "0020|000e": series_uid,
        "0020|0011": "1",
        "0020|0052": _uid(),
        "0020|0037": _ds(np.concatenate([d[:, 0], d[:, 1]])),
        "0028|0030": _ds([spacing[1], spacing[0]]),  # row spacing (along j) \ column spacing (along i)
        "0018|0050": _ds([spacing[2]]),
        "0018|0088": _ds([spacing[2]]),
        "0028|1052": "0",
        "0028|1053": "1",
        "0028|1054": "HU",
    }
    slices = vals.astype(np.int16).transpose(2, 1, 0)  # (k, j, i): one (rows=j, cols=i) image per k
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k, plane in enumerate(slices):
        img = sitk.GetImageFromArray(np.ascontiguousarray(plane))
        img.SetSpacing((float(spacing[0]), float(spacing[1])))
        for tag, value in common.items():
            img.SetMetaData(tag, value)
        pos = origin + d[:, 2] * spacing[2] * k
        img.SetMetaData("0008|0018", _uid())
        img.SetMetaData("0020|0013", str(k + 1))
        img.SetMetaData("0020|0032", _ds(pos))
        img.SetMetaData("0020|1041", _ds([pos @ normal]))
        paths.append(folder / f"{series_uid[-8:]}_{k:04d}.dcm")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(img)
    return paths

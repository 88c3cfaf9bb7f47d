import numpy as np
import pytest

from pneumodet.io.dicom import DicomError, parse_age, read_dicom
from pneumodet.io.dicom_parse import JPEG_BASELINE
from tests.conftest import gradient

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_jpeg_baseline_round_trip_with_metadata(make_dicom):
    path = make_dicom("abc", tags={"ViewPosition": "AP", "PatientAge": "51", "PatientSex": "F",
                                   "PixelSpacing": [0.14, 0.14]})
    image = read_dicom(path)
    assert image.transfer_syntax == JPEG_BASELINE
    assert image.patient_id == "abc"
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (64, 64)
    assert np.abs(image.pixels.astype(int) - gradient()).mean() < 3  # lossy, but close
    assert (image.view_position, image.age, image.sex) == ("AP", 51, "F")
    assert image.pixel_spacing == (0.14, 0.14)
    assert image.original_size == (64, 64)


def test_monochrome1_is_inverted(make_dicom):
    path = make_dicom("m1", transfer_syntax=EXPLICIT_LE, photometric="MONOCHROME1")
    image = read_dicom(path)
    assert image.pixels[0, 0] == 255 and image.pixels[0, -1] == 0  # dark-left gradient now bright-left
    assert image.photometric == "MONOCHROME1"


def test_monochrome1_jpeg_is_inverted(make_dicom):
    image = read_dicom(make_dicom("m1j", photometric="MONOCHROME1"))
    assert image.pixels[:, :4].mean() > 240 and image.pixels[:, -4:].mean() < 15


def test_twelve_bit_applies_rescale_then_window(make_dicom):
    raw = np.array([[0, 1000, 2000, 4095]], dtype=np.uint16).repeat(4, axis=0)
    # rescale: value*2 - 1000 -> [-1000, 1000, 3000, 7190]; window 1000 +- 1000 -> [0, 127.5, 255, 255]
    path = make_dicom("w", raw, transfer_syntax=EXPLICIT_LE, tags={
        "BitsStored": 12, "HighBit": 11, "RescaleSlope": 2, "RescaleIntercept": -1000,
        "WindowCenter": 1000, "WindowWidth": 2001})
    pixels = read_dicom(path).pixels[0]
    assert pixels[0] == 0 and pixels[2] == 255 and pixels[3] == 255
    assert abs(int(pixels[1]) - 128) <= 1


def test_a_narrow_window_follows_dicoms_linear_function_with_its_half_pixel_terms(make_dicom):
    """PS3.3 C.11.2.1.2: below c - 0.5 - (w - 1) / 2 is black, above c - 0.5 + (w - 1) / 2 white, between
    ((x - (c - 0.5)) / (w - 1) + 0.5). At width 4 the half-pixel terms move every step by a third of the range:
    (x - c) / w + 0.5 would give 64 and 128 for 99 and 100, not 85 and 170."""
    raw = np.array([[98, 99, 100, 101, 102]], dtype=np.uint16).repeat(3, axis=0)
    path = make_dicom("narrow", raw, transfer_syntax=EXPLICIT_LE, tags={
        "BitsStored": 12, "HighBit": 11, "WindowCenter": 100, "WindowWidth": 4})
    assert read_dicom(path).pixels[0].tolist() == [0, 85, 170, 255, 255]


def test_twelve_bit_without_window_uses_min_max(make_dicom):
    raw = np.array([[100, 600, 1100]], dtype=np.uint16).repeat(3, axis=0)
    path = make_dicom("mm", raw, transfer_syntax=EXPLICIT_LE, tags={"BitsStored": 12, "HighBit": 11})
    assert read_dicom(path).pixels[0].tolist() == [0, 128, 255]


def test_twelve_bit_with_a_voi_lut_sequence_goes_through_the_table(make_dicom):
    """No window, a display curve as a table instead (common on digital radiographs): the table, not min-max."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    raw = np.array([[100, 600, 1100, 4000]], dtype=np.uint16).repeat(3, axis=0)
    table = (np.sqrt(np.arange(2048) / 2047) * 4095).round().astype(int)  # entries for 0-2047, 12-bit output
    item = Dataset()
    item.LUTDescriptor = [2048, 0, 12]
    item.add_new(0x00283006, "US", table.tolist())  # LUT Data, as unsigned shorts
    path = make_dicom("lut", raw, transfer_syntax=EXPLICIT_LE, tags={
        "BitsStored": 12, "HighBit": 11, "VOILUTSequence": Sequence([item])})
    expected = np.round(table[np.minimum(raw[0], 2047)] / 4095 * 255)  # past the last entry: the last value
    assert read_dicom(path).pixels[0].tolist() == expected.tolist() == [56, 138, 187, 255]  # min-max: 0, 32, 65, 255


def test_twelve_bit_monochrome1_windows_then_inverts(make_dicom):
    raw = np.array([[100, 1100]], dtype=np.uint16).repeat(2, axis=0)
    path = make_dicom("m1w", raw, transfer_syntax=EXPLICIT_LE, photometric="MONOCHROME1",
                      tags={"BitsStored": 12, "HighBit": 11})
    assert read_dicom(path).pixels[0].tolist() == [255, 0]


def test_non_square_keeps_its_size(make_dicom):
    image = read_dicom(make_dicom("ns", gradient(48, 80)))
    assert image.pixels.shape == (48, 80) and image.original_size == (48, 80)


def test_reduced_decode_keeps_original_size(make_dicom):
    image = read_dicom(make_dicom("big", gradient(512, 512)), max_decode_size=128)
    assert image.pixels.shape == (128, 128)
    assert image.original_size == (512, 512)


def test_view_from_series_description(make_dicom):
    path = make_dicom("sd", tags={"SeriesDescription": "view: AP", "ViewPosition": ""})
    assert read_dicom(path).view_position == "AP"


@pytest.mark.parametrize("value, expected", [("51", 51), ("051Y", 51), ("6M", 0), ("155", None),
                                             ("abc", None), ("", None), (None, None), ("120", 120)])
def test_parse_age(value, expected):
    assert parse_age(value) == expected


def test_truncated_file_is_a_dicom_error(make_dicom):
    path = make_dicom("trunc", gradient(256, 256))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert "trunc.dcm" in str(info.value)


def test_not_a_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(DicomError, match="not a DICOM"):
        read_dicom(path)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_a_bare_dataset_without_preamble_is_read(make_dicom, implicit):
    """Older systems write the dataset alone: no 128-byte preamble, no "DICM", no file meta."""
    import pydicom

    pixels = gradient(96, 128)
    path = make_dicom("bare", pixels, transfer_syntax=EXPLICIT_LE, photometric="MONOCHROME1")
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    image = read_dicom(path)
    assert image.patient_id == "bare" and image.original_size == (96, 128)
    assert np.array_equal(image.pixels, 255 - pixels)  # the header still counts: MONOCHROME1 is inverted
    assert image.transfer_syntax == ("1.2.840.10008.1.2" if implicit else EXPLICIT_LE)


def test_missing_pixel_data(make_dicom):
    import pydicom

    path = make_dicom("nopix")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DicomError, match="no pixel data"):
        read_dicom(path)


def test_unsupported_transfer_syntax(make_dicom):
    import pydicom

    path = make_dicom("j2k")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000
    ds.save_as(path)
    with pytest.raises(DicomError, match="unsupported transfer syntax"):
        read_dicom(path)


def test_missing_file(tmp_path):
    with pytest.raises(DicomError, match="not found"):
        read_dicom(tmp_path / "nope.dcm")

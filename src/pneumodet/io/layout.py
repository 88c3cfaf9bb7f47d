"""The Kaggle competition's file layout (names, and which files in a folder are its images)."""

from pathlib import Path

TRAIN_LABELS = "stage_2_train_labels.csv"
CLASS_INFO = "stage_2_detailed_class_info.csv"
SAMPLE_SUBMISSION = "stage_2_sample_submission.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
#: the name ``predict --dicom-sr`` gives a report: ``ID.sr.dcm``
SR_SUFFIX = ".sr.dcm"


def dicom_files(folder: str | Path) -> list[Path]:
    """Return ``folder``'s image files in name order: plain files named ``*.dcm`` in any letter case.

    Left out: hidden names (a leading dot: macOS's ``._`` copies, editors' and pneumodet's own temporary files)
    and the DICOM Structured Reports ``predict --dicom-sr`` writes (``*.sr.dcm``), which hold no image.
    """
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() == ".dcm" and not p.name.startswith(".")
                  and not p.name.lower().endswith(SR_SUFFIX) and p.is_file())

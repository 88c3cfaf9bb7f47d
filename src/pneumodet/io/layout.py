"""The Kaggle competition's file layout (names only: importing this costs nothing)."""

TRAIN_LABELS = "stage_2_train_labels.csv"
CLASS_INFO = "stage_2_detailed_class_info.csv"
SAMPLE_SUBMISSION = "stage_2_sample_submission.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"

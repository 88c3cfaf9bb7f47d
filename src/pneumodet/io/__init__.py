"""Reading and writing the outside world's formats: DICOM, RSNA CSVs, the Kaggle API."""

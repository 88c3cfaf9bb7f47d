"""The review page and HTTP API (FastAPI): look at a run's predictions, run the model on a DICOM."""

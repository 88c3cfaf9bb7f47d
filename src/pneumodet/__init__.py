"""pneumodet: find pneumonia on chest radiographs (RSNA Pneumonia Detection Challenge)."""

__version__ = "0.1.0"

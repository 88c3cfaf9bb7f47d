"""The DICOM node: radiographs in from a PACS over the DICOM network, findings back as SR and presentation states."""

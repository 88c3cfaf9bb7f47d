"""A study's instances pulled from a DICOMweb server (QIDO-RS to find them, WADO-RS to fetch them)."""

from __future__ import annotations

from pathlib import Path

from pneumodet.errors import UserError
from pneumodet.files import atomic_path

#: the radiograph storage classes pulled (CR, DX for presentation and for processing, Secondary Capture)
IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
                 "1.2.840.10008.5.1.4.1.1.7")


def fetch_study(url: str, study_uid: str, folder: str | Path) -> list[Path]:
    """Write the radiographs of study ``study_uid`` on the DICOMweb server at ``url`` into ``folder``, one
    ``SOPInstanceUID.dcm`` each (what is already there is fetched again); return their paths. A one-line UserError
    when the server cannot be reached or the study holds no radiograph."""
    from dicomweb_client.api import DICOMwebClient

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    client = DICOMwebClient(url=url.rstrip("/"))
    try:
        found = client.search_for_instances(study_instance_uid=study_uid)
    except Exception as exc:  # requests' errors: refused, timeout, HTTP status
        raise UserError(f"{url}: cannot search study {study_uid} ({type(exc).__name__}: {str(exc)[:120]})") from None
    written = []
    for instance in found:
        sop_class = instance.get("00080016", {}).get("Value", [""])[0]
        if sop_class not in IMAGE_CLASSES:
            continue  # the study's SRs and presentation states (ours included) are not images
        series = instance["0020000E"]["Value"][0]
        uid = instance["00080018"]["Value"][0]
        try:
            dataset = client.retrieve_instance(study_uid, series, uid)
        except Exception as exc:
            raise UserError(f"{url}: cannot retrieve instance {uid} ({type(exc).__name__})") from None
        path = folder / f"{uid}.dcm"
        with atomic_path(path) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
        written.append(path)
    if not written:
        raise UserError(f"{url}: study {study_uid} holds no radiograph (CR, DX or Secondary Capture)")
    return written

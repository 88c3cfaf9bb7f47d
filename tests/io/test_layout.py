from pneumodet.io.layout import dicom_files


def test_dicom_files_are_the_plain_dcm_files_in_any_case_in_name_order(tmp_path):
    for name in ["b.dcm", "a.DCM", "c.Dcm", "._a.dcm", ".hidden.dcm", "a.sr.dcm", "B.SR.DCM", "notes.txt", "x.dcm.tmp-1"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.dcm").mkdir()
    assert [p.name for p in dicom_files(tmp_path)] == ["a.DCM", "b.dcm", "c.Dcm"]

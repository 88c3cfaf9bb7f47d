from pneumodet.io.layout import image_files


def test_image_files_are_the_plain_dcm_files_in_any_case_in_name_order(tmp_path):
    for name in ["b.dcm", "a.DCM", "c.Dcm", "._a.dcm", ".hidden.dcm", "a.sr.dcm", "B.SR.DCM", "notes.txt", "x.dcm.tmp-1"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.dcm").mkdir()
    assert [p.name for p in image_files(tmp_path)[0]] == ["a.DCM", "b.dcm", "c.Dcm"]


def test_a_file_repeating_a_patient_id_is_left_out_and_named(tmp_path):
    for name in ["b.dcm", "A.dcm", "A.DCM", "c.dcm", "c.Dcm", "a.dcm"]:
        (tmp_path / name).write_bytes(b"x")
    files, repeats = image_files(tmp_path)
    assert [p.name for p in files] == ["A.DCM", "a.dcm", "b.dcm", "c.Dcm"]  # a and A are two patientIds
    assert [(p.name, kept.name) for p, kept in repeats] == [("A.dcm", "A.DCM"), ("c.dcm", "c.Dcm")]

"""The dataset listers on tiny fake copies of each dataset, written in its published layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import pytest

from monai_shpeft.data import (
    DATASETS,
    chaoyang_datalist,
    covid19_ct_datalist,
    covid19_radiography_datalist,
    covid_cxr_datalist,
    ddsm_datalist,
    get_layout,
    isic2018_datalist,
    limuc_datalist,
    load_datalist,
    messidor2_datalist,
    oct_datalist,
    pediatric_cxr3_datalist,
    pediatric_cxr_datalist,
    prepare_datalist,
)
from tests.dataset_writers import (
    _ddsm_case,
    write_chaoyang,
    write_chest_xray,
    write_covid19_radiography,
    write_covid_ct,
    write_covid_cxr,
    write_ddsm,
    write_image,
    write_isic2018,
    write_limuc,
    write_messidor2,
    write_oct,
)

#: fractions that leave every part of a tiny dataset at least one image per class
FRACTIONS = (0.5, 0.25, 0.25)


def labels_of(items: list[dict]) -> list[int]:
    return [item["label"] for item in items]


def check_prepare(name: str, dataset_dir: Path, tmp_path: Path) -> dict[str, list[dict]]:
    """Run ``prepare_datalist`` end to end and check the written file reads back with existing images."""
    split = prepare_datalist(name, dataset_dir, tmp_path / f"{name}_datalist.json", fractions=FRACTIONS, seed=0)
    assert all(split[part] for part in ("training", "validation", "test"))
    record = json.loads((tmp_path / f"{name}_datalist.json").read_text())
    assert record["dataset"] == name and record["classes"] == list(get_layout(name).classes)
    assert load_datalist(tmp_path / f"{name}_datalist.json") == split
    return split


def test_every_layout_is_registered_with_its_modality() -> None:
    expected = {
        "chaoyang": ("pathology", 4),
        "covid19_ct": ("ct", 2),
        "pediatric_cxr": ("xray", 2),
        "pediatric_cxr3": ("xray", 3),
        "oct": ("oct", 4),
        "limuc": ("endoscopy", 4),
        "messidor2": ("fundus", 5),
        "isic2018": ("dermoscopy", 7),
        "ddsm": ("mammography", 2),
        "covid_cxr": ("xray", 3),
        "covid19_radiography": ("xray", 4),
    }
    for name, (modality, num_classes) in expected.items():
        layout = DATASETS[name]
        assert (layout.modality, len(layout.classes)) == (modality, num_classes)
        assert layout.citation


# --------------------------------------------------------------------------------------------------- Chaoyang


def test_chaoyang_lists_the_official_parts(tmp_path: Path) -> None:
    parts = chaoyang_datalist(write_chaoyang(tmp_path / "data"))
    assert set(parts) == {"training", "test"}
    assert labels_of(parts["training"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert labels_of(parts["test"]) == [0, 1, 2, 3]
    assert Path(parts["test"][2]["image"]).name == "2-0.JPG"
    split = check_prepare("chaoyang", tmp_path / "data" / "chaoyang-data", tmp_path)
    assert len(split["training"]) + len(split["validation"]) == 12 and len(split["test"]) == 4


def test_chaoyang_errors_name_the_label_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        chaoyang_datalist(tmp_path / "nowhere")
    release = write_chaoyang(tmp_path / "data") / "chaoyang-data"
    (release / "test" / "1-0.JPG").unlink()
    with pytest.raises(ValueError, match=r"test\.json.*'test/1-0\.JPG'"):
        chaoyang_datalist(release)
    (release / "train.json").write_text(json.dumps([{"name": "train/0-0.JPG", "label": 4}]))
    with pytest.raises(ValueError, match=r"train\.json.*label 4"):
        chaoyang_datalist(release)
    (release / "train.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.json"):
        chaoyang_datalist(release)


# --------------------------------------------------------------------------------------------------- COVID-CT


def test_covid19_ct_lists_the_official_split(tmp_path: Path) -> None:
    parts = covid19_ct_datalist(write_covid_ct(tmp_path / "COVID-CT"))
    assert {part: labels_of(items) for part, items in parts.items()} == {
        "training": [0, 0, 0, 1, 1, 1],
        "validation": [0, 0, 1, 1],
        "test": [0, 0, 1, 1],
    }
    assert Path(parts["training"][0]["image"]).name == "NonCOVID train 0.jpeg"
    assert Path(parts["training"][3]["image"]).parent.name == "CT_COVID"
    split = check_prepare("covid19_ct", tmp_path / "COVID-CT", tmp_path)
    assert [len(split[part]) for part in ("training", "validation", "test")] == [6, 4, 4]


def test_covid19_ct_errors_name_the_split_file(tmp_path: Path) -> None:
    root = write_covid_ct(tmp_path / "COVID-CT")
    (root / "Images-processed" / "CT_COVID" / "COVID val 1.png").unlink()
    with pytest.raises(ValueError, match=r"valCT_COVID\.txt: entry 'COVID val 1\.png'"):
        covid19_ct_datalist(root)
    (root / "Data-split" / "NonCOVID" / "testCT_NonCOVID.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"testCT_NonCOVID\.txt"):
        covid19_ct_datalist(root)
    for image in (root / "Images-processed" / "CT_NonCOVID").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="CT_NonCOVID holds no image"):
        covid19_ct_datalist(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"image folder missing: .*Images-processed/CT_NonCOVID"):
        covid19_ct_datalist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        covid19_ct_datalist(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ Kermany: chest X-ray, OCT


def test_pediatric_cxr_lists_parts_and_accepts_val(tmp_path: Path) -> None:
    parts = pediatric_cxr_datalist(write_chest_xray(tmp_path / "kaggle"))
    # the Kaggle val/ folder goes back to training; prepare_datalist carves a stratified validation part
    assert {part: labels_of(items) for part, items in parts.items()} == {
        "training": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
        "validation": [],
        "test": [0, 0, 1, 1],
    }
    assert all("duplicate" not in item["image"] for item in parts["training"])
    three = pediatric_cxr3_datalist(tmp_path / "kaggle" / "chest_xray")
    assert sorted(labels_of(three["training"])) == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    check_prepare("pediatric_cxr3", tmp_path / "kaggle", tmp_path)


def test_pediatric_cxr_mendeley_layout_without_val(tmp_path: Path) -> None:
    release = tmp_path / "ZhangLabData" / "CellData"
    write_chest_xray(release, with_val=False)
    parts = pediatric_cxr_datalist(tmp_path)
    assert parts["validation"] == [] and len(parts["training"]) == 8
    split = check_prepare("pediatric_cxr", tmp_path, tmp_path)
    assert len(split["training"]) + len(split["validation"]) == 8


def test_kermany_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="part folders not found"):
        pediatric_cxr_datalist(tmp_path)
    release = write_chest_xray(tmp_path / "data") / "chest_xray"
    (release / "train" / "COVID").mkdir()
    with pytest.raises(ValueError, match=r"train has folder\(s\) \['COVID'\]"):
        pediatric_cxr_datalist(release)
    (release / "train" / "COVID").rmdir()
    for image in (release / "test" / "NORMAL").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"test/NORMAL holds no image"):
        pediatric_cxr_datalist(release)
    (release / "test" / "NORMAL").rmdir()
    with pytest.raises(FileNotFoundError, match=r"class folder missing: .*test/NORMAL"):
        pediatric_cxr_datalist(release)
    write_image(release / "test" / "NORMAL" / "a.jpeg")
    write_image(release / "train" / "PNEUMONIA" / "person9_unknown_9.jpeg")
    with pytest.raises(ValueError, match=r"person9_unknown_9\.jpeg has neither"):
        pediatric_cxr3_datalist(release)


def test_oct_reads_the_kaggle_folder_with_a_trailing_space(tmp_path: Path) -> None:
    write_oct(tmp_path)
    assert (tmp_path / "OCT2017 " / "train" / "CNV").is_dir()
    parts = oct_datalist(tmp_path)
    assert labels_of(parts["test"]) == [0, 1, 2, 3]
    assert parts["validation"] == [] and len(parts["training"]) == 16
    split = check_prepare("oct", tmp_path, tmp_path)
    assert len(split["training"]) + len(split["validation"]) == 16 and len(split["test"]) == 4


# ------------------------------------------------------------------------------------------------------- LIMUC


def test_limuc_uses_the_official_split_when_present(tmp_path: Path) -> None:
    parts = limuc_datalist(write_limuc(tmp_path / "limuc"))
    assert set(parts) == {"training", "test"}
    assert labels_of(parts["training"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert labels_of(parts["test"]) == [0, 1, 2, 3]
    check_prepare("limuc", tmp_path / "limuc", tmp_path)


def test_limuc_patient_folders_give_a_flat_list(tmp_path: Path) -> None:
    items = limuc_datalist(write_limuc(tmp_path / "limuc", official=False))
    assert isinstance(items, list)
    assert [labels_of(items).count(k) for k in range(4)] == [4, 4, 4, 2]
    assert all(Path(item["image"]).suffix == ".bmp" for item in items)


def test_limuc_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no LIMUC layout"):
        limuc_datalist(tmp_path)
    root = write_limuc(tmp_path / "limuc", patients=False)
    (root / "test_set" / "Mayo 4").mkdir()
    with pytest.raises(ValueError, match=r"test_set has folder\(s\) \['Mayo 4'\]"):
        limuc_datalist(root)
    (root / "test_set" / "Mayo 4").rmdir()
    for image in (root / "test_set" / "Mayo 2").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"test_set/Mayo 2 holds no image"):
        limuc_datalist(root)
    (root / "test_set" / "Mayo 2").rmdir()
    with pytest.raises(FileNotFoundError, match=r"class folder missing: .*test_set/Mayo 2"):
        limuc_datalist(root)


# --------------------------------------------------------------------------------------------------- Messidor-2


def test_messidor2_skips_ungradable_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_messidor2(tmp_path / "messidor2")
    with caplog.at_level(logging.INFO, logger="monai_shpeft.data.messidor2"):
        items = messidor2_datalist(root)
    assert [labels_of(items).count(k) for k in range(5)] == [4, 4, 4, 4, 4]
    assert all("IM099999" not in item["image"] for item in items)
    assert "skipped 1 ungradable" in caplog.text
    check_prepare("messidor2", root, tmp_path)


def test_messidor2_matches_converted_extensions_and_names_bad_rows(tmp_path: Path) -> None:
    root = write_messidor2(tmp_path / "messidor2")
    converted = root / "IMAGES" / "20050001_0100_PP.png"
    converted.rename(converted.with_suffix(".tif"))
    assert any(item["image"].endswith("20050001_0100_PP.tif") for item in messidor2_datalist(root))
    grades = root / "messidor2-dr-grades" / "messidor_data.csv"
    text = grades.read_text()
    grades.write_text(text + "IM_missing.JPG,2,0,1\n")
    with pytest.raises(ValueError, match=r"messidor_data\.csv, line 23: 'IM_missing\.JPG'"):
        messidor2_datalist(root)
    grades.write_text(text + "IM000000.JPG,7,0,1\n")
    with pytest.raises(ValueError, match=r"line 23: 'IM000000\.JPG' has DR grade '7'"):
        messidor2_datalist(root)
    grades.unlink()
    with pytest.raises(FileNotFoundError, match=r"messidor_data\.csv"):
        messidor2_datalist(root)


# ---------------------------------------------------------------------------------------------------- ISIC 2018


def test_isic2018_lists_the_challenge_parts(tmp_path: Path) -> None:
    parts = isic2018_datalist(write_isic2018(tmp_path / "isic"))
    assert [len(parts[part]) for part in ("training", "validation", "test")] == [21, 7, 7]
    assert labels_of(parts["test"]) == list(range(7))
    assert all(item["image"].endswith(".jpg") for items in parts.values() for item in items)
    check_prepare("isic2018", tmp_path / "isic", tmp_path)


def test_isic2018_without_validation_and_errors(tmp_path: Path) -> None:
    root = write_isic2018(tmp_path / "isic", {"Training": 4, "Test": 1})
    assert isic2018_datalist(root)["validation"] == []
    check_prepare("isic2018", root, tmp_path)
    csv_file = root / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv"
    text = csv_file.read_text()
    csv_file.write_text(text + "ISIC_bad,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n")
    with pytest.raises(ValueError, match=r"Test_GroundTruth\.csv, line 9 \('ISIC_bad'\): expected exactly one"):
        isic2018_datalist(root)
    csv_file.write_text(text + "ISIC_gone,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    with pytest.raises(ValueError, match=r"line 9: image 'ISIC_gone'"):
        isic2018_datalist(root)
    csv_file.write_text(text.replace("VASC", "UNK"))
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['UNK'\]"):
        isic2018_datalist(root)
    csv_file.unlink()
    with pytest.raises(FileNotFoundError, match="Test part missing"):
        isic2018_datalist(root)


# ----------------------------------------------------------------------------------------------------- CBIS-DDSM


def test_ddsm_resolves_the_tcia_download(tmp_path: Path) -> None:
    parts = ddsm_datalist(write_ddsm(tmp_path / "cbis"))
    assert [len(parts["training"]), len(parts["test"])] == [12, 8]
    images = [Path(item["image"]) for items in parts.values() for item in items]
    assert all(image.name == "1-1.dcm" and "full mammogram" in image.parent.name for image in images)
    assert len(set(images)) == len(images)
    labels = {Path(item["image"]).parts[-4]: item["label"] for item in parts["training"]}
    assert labels["Mass-Training_P_00001_LEFT_MLO"] == 1  # benign abnormality + malignant one -> malignant
    assert labels["Mass-Training_P_00003_LEFT_MLO"] == 0  # BENIGN_WITHOUT_CALLBACK -> benign
    assert labels["Mass-Training_P_00003_LEFT_CC"] == 1
    assert pydicom.dcmread(images[0]).Rows == 64
    split = check_prepare("ddsm", tmp_path / "cbis", tmp_path)
    assert len(split["training"]) + len(split["validation"]) == 12


def test_ddsm_classic_paths_and_kaggle_jpegs(tmp_path: Path) -> None:
    root = write_ddsm(tmp_path / "classic")
    folder, study, series = _ddsm_case("Calc", "test", 11, "CC")
    descriptive = root / "CBIS-DDSM" / folder
    (descriptive / "07-20-2016-DDSM-NA-11" / "1.000000-full mammogram images-1" / "1-1.dcm").rename(
        descriptive / "classic.dcm"
    )
    (descriptive / study / series).mkdir(parents=True)
    (descriptive / "classic.dcm").rename(descriptive / study / series / "000000.dcm")
    assert any(item["image"].endswith(f"{series}/000000.dcm") for item in ddsm_datalist(root)["test"])
    kaggle = ddsm_datalist(write_ddsm(tmp_path / "kaggle", kaggle=True))
    assert [len(kaggle["training"]), len(kaggle["test"])] == [12, 8]
    assert all(Path(item["image"]).name == "1-249.jpg" for item in kaggle["test"])


def test_ddsm_errors_name_the_csv_row(tmp_path: Path) -> None:
    root = write_ddsm(tmp_path / "cbis")
    csv_file = root / "calc_case_description_test_set.csv"
    text = csv_file.read_text()
    csv_file.write_text(text + "P_9,LEFT,CC,1,UNPROVEN,Calc-Test_P_00011_LEFT_CC/1/2/000000.dcm\n")
    with pytest.raises(
        ValueError, match=r"calc_case_description_test_set\.csv, line \d+: unknown pathology 'UNPROVEN'"
    ):
        ddsm_datalist(root)
    csv_file.write_text(text + "P_9,LEFT,CC,1,BENIGN,Calc-Test_P_00099_LEFT_CC/1/2/000000.dcm\n")
    with pytest.raises(ValueError, match=r"test_set\.csv, line \d+: image 'Calc-Test_P_00099_LEFT_CC/1/2/000000.dcm'"):
        ddsm_datalist(root)
    csv_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"calc_case_description_test_set\.csv"):
        ddsm_datalist(root)
    assert len(ddsm_datalist(root, abnormalities=("mass",))["test"]) == 4


# ------------------------------------------------------------------------------------------ COVID chest X-rays


def test_covid_cxr_reads_the_fpt_dataset(tmp_path: Path) -> None:
    release = write_covid_cxr(tmp_path) / "COVID_IEEE"
    items = covid_cxr_datalist(tmp_path / "covid-cxr-image-dataset-research")
    assert labels_of(items) == [0] * 4 + [1] * 4 + [2] * 4
    assert not any(item["image"].endswith(".txt") for item in items)
    check_prepare("covid_cxr", release, tmp_path)
    (release / "Lung_Opacity").mkdir()
    with pytest.raises(ValueError, match=r"\['Lung_Opacity'\]"):
        covid_cxr_datalist(release)


def test_covid19_radiography_skips_masks(tmp_path: Path) -> None:
    release = write_covid19_radiography(tmp_path) / "COVID-19_Radiography_Dataset"
    items = covid19_radiography_datalist(tmp_path)
    assert [labels_of(items).count(k) for k in range(4)] == [4, 4, 4, 4]
    assert all(Path(item["image"]).parent.name == "images" for item in items)
    check_prepare("covid19_radiography", release, tmp_path)
    for image in (release / "Viral Pneumonia" / "images").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"Viral Pneumonia/images holds no image"):
        covid19_radiography_datalist(release)
    with pytest.raises(FileNotFoundError, match="not found"):
        covid19_radiography_datalist(tmp_path / "nowhere")

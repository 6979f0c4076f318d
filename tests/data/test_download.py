"""Downloads (the real code path, with the network replaced by local archives) and `data check`'s verdicts."""

from __future__ import annotations

import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from fishr_tune.data import download
from fishr_tune.data.download import check_data_dir, download_dataset, http_fetch
from fishr_tune.data.images import IMAGE_DATASETS, ImageDatasetInfo, write_synthetic_dataset
from fishr_tune.errors import ConfigError


def test_pacs_archive_is_unpacked_into_domainbeds_layout(tmp_path: Path) -> None:
    staging = write_synthetic_dataset("PACS", tmp_path / "staging", classes=("dog", "giraffe"), images_per_class=2, size=(8, 8))
    archive = tmp_path / "pacs.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # DomainBed's PACS.zip unpacks to kfold/<env>/<class>/<image>
        for path in sorted(staging.rglob("*.jpg")):
            zf.write(path, "kfold/" + path.relative_to(staging).as_posix())
    fetched = []

    def fetch(url: str, destination: Path) -> None:
        fetched.append(url)
        destination.write_bytes(archive.read_bytes())

    root = download_dataset("PACS", tmp_path / "data", fetch=fetch)
    assert root == tmp_path / "data" / "PACS"
    assert fetched == [download.RECIPES["PACS"].sources[0].url]
    assert not (tmp_path / "data" / "PACS.zip").exists() and not (tmp_path / "data" / "kfold").exists()
    report = check_data_dir(tmp_path / "data", ["PACS"])[0]
    assert report.status == "incomplete" and report.environments == {"A": 4, "C": 4, "P": 4, "S": 4}
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        download_dataset("PACS", tmp_path / "data", fetch=fetch)


def test_offline_download_is_a_clear_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ConfigError, match="needs internet access"):
        download_dataset("VLCS", tmp_path, fetch=http_fetch)
    assert list(tmp_path.iterdir()) == []


def test_archive_members_may_not_escape(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(ConfigError, match="would unpack outside"):
        download.extract(archive, tmp_path / "into")


def test_check_reports_every_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHR_TUNE_CACHE", str(tmp_path / "cache"))
    write_synthetic_dataset("PACS", tmp_path, classes=("a", "b"), images_per_class=[1, 2, 3, 4], size=(8, 8))
    write_synthetic_dataset("VLCS", tmp_path, classes=("a", "b"), images_per_class=2, size=(8, 8))
    (tmp_path / "VLCS" / "LabelMe" / "b" / "img_0000.jpg").unlink()
    (tmp_path / "VLCS" / "LabelMe" / "b" / "img_0001.jpg").unlink()
    # A complete OfficeHome, as far as the published counts say: shrink them to the miniature's.
    write_synthetic_dataset("OfficeHome", tmp_path, classes=("a", "b"), images_per_class=1, size=(8, 8))
    small = ImageDatasetInfo("OfficeHome", "office_home", ("A", "C", "P", "R"), ("Art", "Clipart", "Product", "Real World"),
                             2, (2, 2, 2, 2), 8, 300)
    monkeypatch.setitem(IMAGE_DATASETS, "OfficeHome", small)
    reports = {r.name: r for r in check_data_dir(tmp_path)}
    assert reports["PACS"].status == "incomplete"
    assert reports["PACS"].environments == {"A": 2, "C": 4, "P": 6, "S": 8} and reports["PACS"].num_classes == 2
    assert reports["VLCS"].status == "invalid" and "LabelMe/b holds no images" in reports["VLCS"].problems[0]
    assert reports["OfficeHome"].status == "complete" and reports["OfficeHome"].problems == []
    assert reports["DomainNet"].status == "missing" and reports["TerraIncognita"].status == "missing"
    with pytest.raises(ConfigError, match="unknown dataset 'Pacs'"):
        check_data_dir(tmp_path, ["Pacs"])


def test_download_records_each_archives_sha256(tmp_path: Path) -> None:
    import hashlib
    import json

    staging = write_synthetic_dataset("PACS", tmp_path / "staging", classes=("dog",), images_per_class=1, size=(8, 8))
    archive = tmp_path / "pacs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(staging.rglob("*.jpg")):
            zf.write(path, "kfold/" + path.relative_to(staging).as_posix())
    root = download_dataset("PACS", tmp_path / "data", fetch=lambda url, dest: dest.write_bytes(archive.read_bytes()))
    manifest = json.loads((root / "download.json").read_text())
    assert manifest == [{"url": download.RECIPES["PACS"].sources[0].url, "archive": "PACS.zip",
                         "bytes": archive.stat().st_size, "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}]
    assert check_data_dir(tmp_path / "data", ["PACS"])[0].status == "incomplete"  # the manifest is no stray folder


def test_a_corrupt_archive_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "mine.txt").write_text("the user's own file")

    def error_page(url: str, destination: Path) -> None:  # what a quota-limited Drive link returns
        destination.write_text("<html>Too many users have viewed or downloaded this file recently</html>")

    with pytest.raises(ConfigError, match=r"PACS\.zip: not a readable zip archive .*error page"):
        download_dataset("PACS", data_dir, fetch=error_page)
    assert sorted(p.name for p in data_dir.iterdir()) == ["mine.txt"]


def test_a_checksum_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = download.RECIPES["VLCS"].sources[0]
    monkeypatch.setitem(download.RECIPES, "VLCS", download.Recipe((download.Source(source.url, source.archive, "0" * 64),), "."))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        download_dataset("VLCS", tmp_path, fetch=lambda url, dest: dest.write_bytes(b"not the data"))
    assert list(tmp_path.iterdir()) == []


def test_an_http_error_is_not_called_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(ConfigError, match="answered HTTP 404 \\(Not Found\\)") as error:
        download_dataset("VLCS", tmp_path, fetch=http_fetch)
    assert "internet access" not in str(error.value)
    assert list(tmp_path.iterdir()) == []

"""Downloads (the real code path, with the network replaced by local archives) and `data check`'s verdicts."""

from __future__ import annotations

import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from fishr_tune.data import download
from fishr_tune.data.catalog import IMAGE_DATASETS, ImageDatasetInfo
from fishr_tune.data.download import check_data_dir, download_dataset, http_fetch
from fishr_tune.data.synthetic import write_synthetic_dataset
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


# ---- names read from downloaded content stay inside the dataset folder ----------------------------------------


def terra_annotations(file_name: str) -> dict:
    return {"categories": [{"id": 1, "name": "bird"}], "annotations": [{"image_id": "a", "category_id": 1}],
            "images": [{"id": "a", "location": 38, "file_name": file_name}]}


@pytest.mark.parametrize("file_name", ["../../victim.jpg", "/etc/hostname", "", 7])
def test_a_terra_incognita_file_name_outside_the_images_is_refused(tmp_path: Path, file_name) -> None:
    import json

    root = tmp_path / "data" / "terra_incognita"
    (root / "eccv_18_all_images_sm").mkdir(parents=True)
    (root / "eccv_18_all_images_sm" / "ok.jpg").write_bytes(b"jpg")
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(b"the user's file")
    (root / "caltech_images_20210113.json").write_text(json.dumps(terra_annotations(file_name)))
    with pytest.raises(ConfigError, match=r"caltech_images_20210113.json: image file_name: .* points outside"):
        download.organize_terra_incognita(root)
    assert victim.read_bytes() == b"the user's file"
    assert not (tmp_path / "data" / "victim.jpg").exists() and not list(tmp_path.rglob("location_38/bird/*"))


def test_terra_incognita_copies_a_plain_file_name(tmp_path: Path) -> None:
    import json

    root = tmp_path / "terra_incognita"
    (root / "eccv_18_all_images_sm").mkdir(parents=True)
    (root / "eccv_18_all_images_sm" / "ok.jpg").write_bytes(b"jpg")
    (root / "caltech_images_20210113.json").write_text(json.dumps(terra_annotations("ok.jpg")))
    download.organize_terra_incognita(root)
    assert (root / "location_38" / "bird" / "ok.jpg").read_bytes() == b"jpg"


@pytest.mark.parametrize("line", ["../../victim.txt", "{victim}", "clipart/../../victim.txt"])
def test_a_domain_net_duplicates_line_outside_the_dataset_deletes_nothing(tmp_path: Path, line: str) -> None:
    root = tmp_path / "data" / "domain_net"
    (root / "clipart" / "cat").mkdir(parents=True)
    (root / "clipart" / "cat" / "dup.jpg").write_bytes(b"dup")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    listing = f"clipart/cat/dup.jpg\n{line.format(victim=victim)}\n"
    with pytest.raises(ConfigError, match=r"domain_net_duplicates.txt:2: .* points outside"):
        download.remove_domain_net_duplicates(root, lambda url, dest: dest.write_text(listing))
    assert victim.read_text() == "keep me"


def test_domain_net_duplicates_inside_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "domain_net"
    (root / "clipart" / "cat").mkdir(parents=True)
    for name in ("dup.jpg", "keep.jpg"):
        (root / "clipart" / "cat" / name).write_bytes(b"x")
    assert download.remove_domain_net_duplicates(root, lambda url, dest: dest.write_text("clipart/cat/dup.jpg\n\n")) == 1
    assert [p.name for p in (root / "clipart" / "cat").iterdir()] == ["keep.jpg"]


def test_every_source_is_fetched_over_https() -> None:
    urls = [source.url for recipe in download.RECIPES.values() for source in recipe.sources]
    assert len(urls) == 11 and all(url.startswith("https://") for url in urls), urls
    assert download.DOMAIN_NET_DUPLICATES_URL.startswith("https://")


def pacs_zip(tmp_path: Path, name: str, images: int) -> bytes:
    staging = write_synthetic_dataset("PACS", tmp_path / name, classes=("dog",), images_per_class=images, size=(8, 8))
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(staging.rglob("*.jpg")):
            zf.write(path, "kfold/" + path.relative_to(staging).as_posix())
    return archive.read_bytes()


def test_a_re_download_is_compared_with_the_checksum_recorded_the_first_time(tmp_path: Path) -> None:
    import hashlib
    import json
    import shutil

    first, other = pacs_zip(tmp_path, "first", 1), pacs_zip(tmp_path, "other", 2)
    data = tmp_path / "data"
    root = download_dataset("PACS", data, fetch=lambda url, dest: dest.write_bytes(first))
    url = download.RECIPES["PACS"].sources[0].url
    recorded = data / download.KNOWN_CHECKSUMS_FILE
    assert json.loads(recorded.read_text()) == {url: hashlib.sha256(first).hexdigest()}
    shutil.rmtree(root)
    with pytest.raises(ConfigError, match=r"checksum mismatch \(sha256 [0-9a-f]{64}, but [0-9a-f]{64} when it was downloaded"):
        download_dataset("PACS", data, fetch=lambda url, dest: dest.write_bytes(other))
    assert sorted(p.name for p in data.iterdir()) == [download.KNOWN_CHECKSUMS_FILE]  # nothing of it stays
    download_dataset("PACS", data, fetch=lambda url, dest: dest.write_bytes(first))  # the same bytes again: accepted
    assert check_data_dir(data, ["PACS"])[0].environments == {"A": 1, "C": 1, "P": 1, "S": 1}

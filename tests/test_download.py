"""The download path, for real, against an HTTP server on 127.0.0.1 serving zips built here (no mocks)."""

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data_processor import (
    SOURCE_FILES,
    ChecksumMismatchError,
    DownloadError,
    UnsafeArchiveError,
    download_ml1m,
    load_dataset,
    write_synthetic_ml1m,
)


class ZipServer(ThreadingHTTPServer):
    """Serves `body` at /ml-1m.zip (404 elsewhere); the first `drop_first` responses send half the body and
    hang up."""

    body = b""
    drop_first = 0
    requests_served = 0


class ZipHandler(BaseHTTPRequestHandler):
    server: ZipServer

    def do_GET(self) -> None:
        self.server.requests_served += 1
        if self.path != "/ml-1m.zip":
            self.send_error(404)
            return
        body = self.server.body
        dropped = self.server.requests_served <= self.server.drop_first
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if dropped else body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ZipServer]:
    httpd = ZipServer(("127.0.0.1", 0), ZipHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def url_of(httpd: ZipServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/ml-1m.zip"


def build_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def ml1m_zip(tmp_path: Path) -> tuple[bytes, dict[str, bytes]]:
    """A zip laid out like GroupLens' (ml-1m/<file>) with synthetic data, and the files' bytes."""
    folder = write_synthetic_ml1m(tmp_path / "source")
    files = {name: (folder / name).read_bytes() for name in SOURCE_FILES}
    return build_zip({f"ml-1m/{name}": content for name, content in files.items()}), files


def digests(body: bytes) -> dict[str, str]:
    return {"md5": hashlib.md5(body).hexdigest(), "sha256": hashlib.sha256(body).hexdigest()}


def test_download_extracts_verified_zip_and_skips_when_present(server, ml1m_zip, tmp_path):
    body, files = ml1m_zip
    server.body = body
    dest = tmp_path / "out" / "ml-1m"

    assert download_ml1m(dest, url=url_of(server), **digests(body)) == dest
    assert {name: (dest / name).read_bytes() for name in SOURCE_FILES} == files
    assert (tmp_path / "out" / "ml-1m.zip").read_bytes() == body
    assert not list((tmp_path / "out").rglob("*.part"))

    download_ml1m(dest, url=url_of(server), **digests(body))
    assert server.requests_served == 1
    assert load_dataset(dest, verify=False).num_users == 40


def test_download_reuses_a_verified_zip(server, ml1m_zip, tmp_path):
    body, files = ml1m_zip
    (tmp_path / "ml-1m.zip").write_bytes(body)
    download_ml1m(tmp_path / "ml-1m", url=url_of(server), **digests(body))
    assert server.requests_served == 0
    assert (tmp_path / "ml-1m" / "ratings.dat").read_bytes() == files["ratings.dat"]


def test_checksum_mismatch_is_an_error_and_leaves_no_file(server, ml1m_zip, tmp_path):
    body, _ = ml1m_zip
    server.body = body
    wrong = digests(body) | {"md5": "0" * 32}
    with pytest.raises(ChecksumMismatchError, match=r"md5 [0-9a-f]{32} is not the expected 0{32}"):
        download_ml1m(tmp_path / "out" / "ml-1m", url=url_of(server), **wrong)
    assert list((tmp_path / "out").iterdir()) == []


def test_sha256_is_checked_too(server, ml1m_zip, tmp_path):
    body, _ = ml1m_zip
    server.body = body
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        download_ml1m(
            tmp_path / "out" / "ml-1m", url=url_of(server), md5=digests(body)["md5"], sha256="f" * 64
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_connection_dropped_mid_transfer_is_retried(server, ml1m_zip, tmp_path):
    body, files = ml1m_zip
    server.body = body
    server.drop_first = 1
    dest = download_ml1m(tmp_path / "ml-1m", url=url_of(server), backoff_s=0.01, **digests(body))
    assert server.requests_served == 2
    assert (dest / "ratings.dat").read_bytes() == files["ratings.dat"]
    assert not list(tmp_path.rglob("*.part"))


def test_connection_dropped_on_every_try_gives_up_cleanly(server, ml1m_zip, tmp_path):
    body, _ = ml1m_zip
    server.body = body
    server.drop_first = 10
    with pytest.raises(DownloadError, match=r"could not download .*\(3 attempts\)"):
        download_ml1m(
            tmp_path / "out" / "ml-1m", url=url_of(server), retries=2, backoff_s=0.01, **digests(body)
        )
    assert server.requests_served == 3
    assert list((tmp_path / "out").iterdir()) == []


def test_http_error_is_not_retried(server, tmp_path):
    missing = url_of(server).replace("ml-1m.zip", "missing.zip")
    with pytest.raises(DownloadError, match="404"):
        download_ml1m(tmp_path / "out" / "ml-1m", url=missing, backoff_s=0.01)
    assert server.requests_served == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_unreachable_server_is_a_download_error(server, tmp_path):
    url = url_of(server)
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError, match=r"could not download .*\(2 attempts\)"):
        download_ml1m(tmp_path / "ml-1m", url=url, retries=1, backoff_s=0.01)


@pytest.mark.parametrize("member", ["ml-1m/../../evil.txt", "/tmp/evil.txt", "ml-1m\\..\\evil.txt"])
def test_zip_with_unsafe_member_is_refused(server, ml1m_zip, tmp_path, member):
    _, files = ml1m_zip
    body = build_zip({f"ml-1m/{name}": content for name, content in files.items()} | {member: b"gotcha"})
    server.body = body
    out = tmp_path / "a" / "b"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract member"):
        download_ml1m(out / "ml-1m", url=url_of(server), **digests(body))
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    assert written == ["a/b/ml-1m.zip", *(f"source/{name}" for name in sorted(SOURCE_FILES))]

"""Download the public data for users without a prepared data folder.

Two sources, written under ``dest``:

* ``openi/NLMCXR_reports.tgz``: the original Open-i archive of Indiana University
  chest X-ray reports (``ecgen-radiology/<n>.xml``), from the U.S. National Library
  of Medicine (Demner-Fushman et al., JAMIA 2016; CC BY-NC-ND 4.0).
* ``opi-benchmark/{train,validate,test}.jsonl``: the findings -> impression split of
  Van Veen et al. (Nature Medicine 2024), from the StanfordMIMI/clin-summ repository
  (MIT license) pinned at :data:`CLIN_SUMM_COMMIT`, each file checked against its
  sha256 in :data:`BENCHMARK_SHA256`.

Files already present and valid are not fetched again. Each file is written to
``<name>.part`` first and moved into place only once it has been checked, so an
interrupted or corrupt download never leaves a file that looks valid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

OPENI_REPORTS_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
CLIN_SUMM_COMMIT = "e8ce6372f667efbe61ca69636790b2389cef1b38"
BENCHMARK_BASE_URL = f"https://raw.githubusercontent.com/StanfordMIMI/clin-summ/{CLIN_SUMM_COMMIT}/data/opi"
#: sha256 of the benchmark files at :data:`CLIN_SUMM_COMMIT`.
BENCHMARK_SHA256: dict[str, str] = {
    "train.jsonl": "aca1763de4fb0377748dbf1897f9d5603c170edec6735a5f5a8d99480b3b1bd9",
    "validate.jsonl": "9ab3a9445b3c61edb617655556e661b997b260e673a84efaeb423e04802b21c3",
    "test.jsonl": "a0bd7b81096ba9e1918ba828d5c46374127057079d8a71dc2763b0ee91a0840a",
}
OPENI_ARCHIVE_NAME = "NLMCXR_reports.tgz"

#: ``opener(url, timeout=...)`` returning a readable binary file object (context manager).
Opener = Callable[..., IO[bytes]]


class DownloadError(RuntimeError):
    """A download failed or produced a file that does not pass its check."""


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def count_report_xml(path: str | os.PathLike[str]) -> int:
    """Number of ``*.xml`` members in a tar.gz archive; raises :class:`DownloadError` if unreadable."""
    try:
        with tarfile.open(path, "r:*") as tar:
            return sum(1 for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"{path}: not a readable tar.gz archive ({exc})") from exc


def _check_archive(path: Path) -> str:
    n = count_report_xml(path)
    if n == 0:
        raise DownloadError(f"{path}: the archive holds no .xml report")
    return f"{n} XML reports"


def _check_sha256(expected: str) -> Callable[[Path], str]:
    def check(path: Path) -> str:
        got = file_sha256(path)
        if got != expected:
            raise DownloadError(f"{path}: sha256 {got} does not match the pinned {expected}")
        return f"sha256 {got[:12]}... ok"

    return check


def _fetch(url: str, target: Path, check: Callable[[Path], str], opener: Opener, timeout: float) -> str:
    """Download ``url`` to ``target`` via ``target.part``, keep it only if ``check`` passes."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with opener(url, timeout=timeout) as response, part.open("wb") as out:
            shutil.copyfileobj(response, out)
        detail = check(part)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except Exception as exc:  # network, HTTP and file errors all end the same way
        part.unlink(missing_ok=True)
        raise DownloadError(f"downloading {url} failed: {exc}") from exc
    os.replace(part, target)
    return detail


def download_openi(
    dest: str | os.PathLike[str],
    *,
    openi_url: str = OPENI_REPORTS_URL,
    benchmark_base_url: str = BENCHMARK_BASE_URL,
    benchmark_sha256: Mapping[str, str] = BENCHMARK_SHA256,
    opener: Opener | None = None,
    timeout: float = 120.0,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Fetch the Open-i report archive and the benchmark split into ``dest``.

    Writes ``dest/openi/NLMCXR_reports.tgz`` (checked to be a tar.gz holding XML
    reports; the Open-i site publishes no checksum) and
    ``dest/opi-benchmark/{train,validate,test}.jsonl`` (checked against
    ``benchmark_sha256``). Files already present and valid are kept as they are.

    Args:
        dest: data folder to fill (created if needed).
        openi_url: URL of the report archive (``file://`` URLs work, for tests/mirrors).
        benchmark_base_url: URL folder holding ``<split>.jsonl``.
        benchmark_sha256: expected sha256 per benchmark file name.
        opener: ``opener(url, timeout=...)`` -> binary file object; default ``urllib.request.urlopen``.
        timeout: seconds per request.
        log: where progress lines go.

    Returns:
        ``{'openi': archive path, 'train': ..., 'validate': ..., 'test': ...}``.

    Raises:
        DownloadError: a download failed or a file did not pass its check (nothing invalid is left behind).
    """
    dest = Path(dest)
    open_url: Opener = opener or urllib.request.urlopen
    jobs: list[tuple[str, str, Path, Callable[[Path], str]]] = [
        ("openi", openi_url, dest / "openi" / OPENI_ARCHIVE_NAME, _check_archive)
    ]
    for name in ("train", "validate", "test"):
        file_name = f"{name}.jsonl"
        if file_name not in benchmark_sha256:
            raise ValueError(f"benchmark_sha256 has no entry for {file_name}")
        jobs.append(
            (
                name,
                f"{benchmark_base_url.rstrip('/')}/{file_name}",
                dest / "opi-benchmark" / file_name,
                _check_sha256(benchmark_sha256[file_name]),
            )
        )
    out: dict[str, Path] = {}
    for key, url, target, check in jobs:
        if target.is_file():
            try:
                detail = check(target)
            except DownloadError as exc:
                log(f"{target}: present but invalid ({exc}); downloading again")
            else:
                log(f"{target}: already present ({detail}); skipped")
                out[key] = target
                continue
        log(f"downloading {url} -> {target}")
        detail = _fetch(url, target, check, open_url, timeout)
        log(f"{target}: {detail}")
        out[key] = target
    return out

"""Layer 1 - reading, validating and splitting radiology reports into canonical records.

Imports only :mod:`radimpress_lib.core`.

Sources (each loader returns a ``datasets`` object with the canonical features of
:mod:`radimpress_lib.core.schema` plus a report of what was read, kept and skipped),
in :mod:`radimpress_lib.data.sources` and :mod:`radimpress_lib.data.benchmark`:

* :func:`load_openi_csv` -- ``indiana_reports.csv``, the flattened Open-i collection;
* :func:`load_openi_xml` -- the original Open-i archive ``NLMCXR_reports.tgz`` (or its
  extracted ``ecgen-radiology/`` folder); gives the same records as the CSV;
* :func:`load_benchmark` -- the Van Veen et al. findings -> impression split
  (``opi-benchmark/{train,validate,test}.jsonl``), joined to the Open-i reports to add
  indication, comparison and MeSH terms;
* :func:`load_user` -- a user's CSV / TSV / JSONL / Parquet file with a column map.

Validation (strict or lenient) is shared by all loaders, see
:mod:`radimpress_lib.data.validation`; CSV is parsed strictly with true file lines by
:mod:`radimpress_lib.data.csvfile` (also used by ``radimpress draft``); which studies a run is
for (modality, body part) is :mod:`radimpress_lib.data.scope`. Without any data folder, runs
that ask for it read a labelled synthetic sample (:mod:`radimpress_lib.data.synthetic`). :func:`load_data` (a run's params) and
:func:`load_from_config` (plain arguments) in :mod:`radimpress_lib.data.loading` are the
single entry the notebooks and the CLI use: they pick the source, assign splits, remove test
leakage from the training splits and apply the smoke-run limits. Where the data folder is:
:mod:`radimpress_lib.data.locate`; split assignment: :mod:`radimpress_lib.data.splits`.
Preference pairs (:mod:`~radimpress_lib.data.preferences`) and the physician review store
(:mod:`~radimpress_lib.data.feedback`) are data too.

Text is kept as written (including the ``XXXX`` de-identification tokens of
Open-i); only leading and trailing whitespace is stripped.

CLI::

    python -m radimpress_lib.data download [--dest DIR] [--force]
    python -m radimpress_lib.data check [--data-dir DIR] [--source benchmark]
"""

from radimpress_lib.data.benchmark import (
    BenchmarkReport,
    JoinStats,
    load_benchmark,
    normalize_findings,
    remove_test_leakage,
)
from radimpress_lib.data.loading import (
    DATA_SOURCES,
    data_files_for_config,
    data_files_read,
    load_data,
    load_from_config,
    main,
)
from radimpress_lib.data.locate import ENV_DATA_DIR, DataNotFoundError, default_download_dir, resolve_data_dir
from radimpress_lib.data.scope import StudyScope
from radimpress_lib.data.sources import load_openi_csv, load_openi_xml, load_user, resolve_user_column_map
from radimpress_lib.data.splits import seeded_group_split
from radimpress_lib.data.validation import DataValidationError, LoadReport

__all__ = [
    "BenchmarkReport",
    "DATA_SOURCES",
    "DataNotFoundError",
    "DataValidationError",
    "ENV_DATA_DIR",
    "JoinStats",
    "LoadReport",
    "data_files_for_config",
    "data_files_read",
    "default_download_dir",
    "load_benchmark",
    "load_data",
    "load_from_config",
    "main",
    "load_openi_csv",
    "load_openi_xml",
    "load_user",
    "normalize_findings",
    "remove_test_leakage",
    "resolve_data_dir",
    "resolve_user_column_map",
    "seeded_group_split",
    "StudyScope",
]

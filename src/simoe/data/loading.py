"""One entry point that picks the loader from what ``source`` is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simoe.data.jsonl import examples_from_records, load_jsonl
from simoe.data.records import DataError, ExampleList
from simoe.data.sni import load_sni

_FILE_SUFFIXES = {".jsonl", ".json"}
_HF_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def is_sni_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory with ``tasks/`` and ``splits/`` (SNI layout)."""
    p = Path(path)
    return (p / "tasks").is_dir() and (p / "splits").is_dir()


def is_saved_dataset(path: str | Path) -> bool:
    """True if ``path`` was written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``."""
    p = Path(path)
    return (p / "dataset_dict.json").is_file() or (
        (p / "state.json").is_file() and (p / "dataset_info.json").is_file()
    )


def _looks_like_hub_id(source: str) -> bool:
    if source.startswith(("/", ".", "~")) or "\\" in source or ".." in source or "--" in source:
        return False
    if Path(source).suffix.lower() in _FILE_SUFFIXES | set(_HF_FILE_BUILDERS):
        return False
    return bool(_HUB_ID.match(source))


def _examples_from_dataset(ds: Any, name: str, skip_invalid: bool) -> ExampleList:
    rows = ((f"{name} row {i}", row) for i, row in enumerate(ds))
    return examples_from_records(rows, name, skip_invalid=skip_invalid)


def _pick_split(dsd: Any, split: str, name: str) -> Any:
    if split not in dsd:
        raise DataError(f"{name}: no split {split!r} (available: {', '.join(sorted(dsd))})")
    return dsd[split]


def load_examples(
    source: str | Path,
    split: str = "train",
    *,
    skip_invalid: bool = False,
    num_pos_examples: int = 2,
    max_instances_per_task: int | None = 100,
    hf_split: str | None = None,
    hf_kwargs: Mapping[str, Any] | None = None,
) -> ExampleList:
    """Load examples from any supported source.

    * a directory with ``tasks/`` and ``splits/``: SNI (:func:`~simoe.data.sni.load_sni`,
      ``split`` names the split file, ``num_pos_examples``/``max_instances_per_task`` apply);
    * a ``.jsonl``/``.json`` file: prompt/completion or messages records
      (:func:`~simoe.data.jsonl.load_jsonl`; ``split`` is ignored);
    * a directory written by ``save_to_disk``: loaded with ``datasets.load_from_disk``
      (a ``DatasetDict`` is indexed with ``hf_split or split``);
    * a ``.parquet``/``.csv``/``.arrow`` file, another existing directory, or a Hugging Face Hub
      dataset id (or a packaged builder such as ``"json"`` with
      ``hf_kwargs={"data_files": ...}``): ``datasets.load_dataset(source,
      split=hf_split or split, **hf_kwargs)``.

    Rows of Hugging Face datasets must be prompt/completion or messages records (as in JSONL).
    A path that does not exist and is not a plausible Hub id raises :class:`DataError`; so does
    any failure of ``datasets`` to load the source.
    """
    text = str(source)
    path = Path(text).expanduser()
    kwargs = dict(hf_kwargs or {})
    split_name = hf_split or split

    if path.is_dir() and is_sni_dir(path):
        return load_sni(
            path,
            split,
            num_pos_examples=num_pos_examples,
            max_instances_per_task=max_instances_per_task,
            skip_invalid=skip_invalid,
        )
    if path.is_dir() and (path / "tasks").is_dir():  # SNI-shaped, but no splits/
        raise DataError(f"{path}: has tasks/ but no splits/ directory; an SNI directory needs "
                        f"splits/{split}_tasks.txt listing the tasks of split {split!r}")
    if path.is_file() and path.suffix.lower() in _FILE_SUFFIXES:
        return load_jsonl(path, skip_invalid=skip_invalid)

    import datasets  # deferred: importing datasets is slow and not needed for local files

    if path.is_dir() and is_saved_dataset(path):
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:  # re-raised with the location
            raise DataError(f"{path}: could not load the saved dataset ({err})") from err
        if isinstance(ds, datasets.DatasetDict):
            ds = _pick_split(ds, split_name, str(path))
        return _examples_from_dataset(ds, f"{path} [{split_name}]", skip_invalid)

    if path.is_file():
        builder = _HF_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unsupported file type (use .jsonl, .json, .parquet, .csv)")
        args: tuple[str, ...] = (builder,)
        kwargs.setdefault("data_files", str(path))
        split_name = hf_split or "train"  # single-file builders put everything in "train"
    elif path.is_dir() or text in ("json", "csv", "parquet", "arrow", "text"):
        args = (str(path) if path.is_dir() else text,)
    elif _looks_like_hub_id(text):
        args = (text,)
    else:
        raise DataError(f"{text}: no such file or directory, and not a Hugging Face Hub dataset id")
    try:
        ds = datasets.load_dataset(*args, split=split_name, **kwargs)
    except Exception as err:  # datasets raises many types
        raise DataError(
            f"{text}: could not load split {split_name!r} with datasets.load_dataset ({err})"
        ) from err
    return _examples_from_dataset(ds, f"{text} [{split_name}]", skip_invalid)

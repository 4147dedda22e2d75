"""HTML -> main text with datatrove's Trafilatura extractor, accounting for every page.

datatrove's extractor step drops a page silently when extraction times out, crashes or finds no main text; here
the page is flagged with the reason instead and leaves through RecordCheck into the ledger. Only documents that
came from WARC responses (`content_type: html`) are extracted; text inputs pass through untouched.
"""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import ExtractorSandbox


class ExtractHtml(Trafilatura):
    name = "extract"

    def __init__(self, timeout: float = 5.0) -> None:
        super().__init__(favour_precision=True, timeout=timeout, deduplicate=True)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with ExtractorSandbox(timeout=self.timeout, warmup_text="") as extractor:
            for doc in data:
                if doc.metadata.get("content_type") != "html" or doc.metadata.get("bad_record"):
                    yield doc
                    continue
                self.stat_update("total")
                with self.track_time():
                    try:
                        doc.text = extractor.process_document(doc.text, self.extract) or ""
                    except TimeoutError:
                        doc.metadata["bad_record"] = "html_extraction_timeout"
                    except EOFError:
                        doc.metadata["bad_record"] = "html_extraction_crashed"
                    except Exception as e:  # trafilatura raises many types on hostile HTML
                        doc.metadata["bad_record"] = f"html_extraction_error:{type(e).__name__}"
                if not doc.metadata.get("bad_record") and not doc.text.strip():
                    doc.metadata["bad_record"] = "html_no_main_text"
                self.stat_update(doc.metadata.get("bad_record", "extracted").split(":")[0])
                doc.metadata.pop("content_type", None)
                yield doc

"""ReportPages: the report step's output, one page comparing the baselines and every stage (HTML and
Markdown), the figures behind it and the headline sentence."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class ReportPages(Artifact):
    kind = "report"
    kfp_type = "Dataset"
    writer = "report"

    HTML = "report.html"
    MARKDOWN = "report.md"
    SUMMARY = "summary.json"  # {row label: {metric: value}}
    HEADLINE = "headline.json"  # {"split", "text"}: the sentence the CLI prints after a run

    def headline(self) -> dict[str, Any]:
        return self.read_json(self.HEADLINE, "the report's headline")

    def summary(self) -> dict[str, Any]:
        return self.read_json(self.SUMMARY, "the figures of the report")

    def write(self, html: str, markdown: str, summary: dict[str, Any], headline: dict[str, Any]) -> None:
        self.write_text(self.HTML, html)
        self.write_text(self.MARKDOWN, markdown)
        self.write_json(self.SUMMARY, summary)
        self.write_json(self.HEADLINE, headline)

"""Scoring aligners against a gold standard: the gold's and the predictions' Pharaoh files read and checked, eflomal
run on the gold pairs together with a corpus, and each aligner's AER, precision and recall, with bootstrap
intervals where asked for."""

from __future__ import annotations

from mt.alignment.eflomal import eflomal_links
from mt.alignment.links import Link, alignment_error_rate, bootstrap_aer, read_pharaoh
from mt.data import language_file
from mt.files import InputError, read_lines


def read_alignments(path: str) -> list[tuple[set, set]]:
    try:
        return [read_pharaoh(line, f"{path}:{number}") for number, line in enumerate(read_lines(path), start=1)]
    except ValueError as e:
        raise InputError(str(e)) from None


def read_corpus(prefix: str, languages: list[str]) -> tuple[list[str], list[str]]:
    """The --eflomal corpus: PREFIX.SRC and PREFIX.TGT, as many lines each."""
    corpus = [list(read_lines(language_file(prefix, lang))) for lang in languages]
    if len(corpus[0]) != len(corpus[1]):
        raise InputError(f"{prefix}: {languages[0]} has {len(corpus[0])} lines but {languages[1]} {len(corpus[1])}")
    return corpus[0], corpus[1]


def eflomal_with_corpus(sources: list[str], targets: list[str], corpus: tuple[list[str], list[str]],
                        **options) -> list[set]:
    """eflomal's links of the gold pairs, aligned together with the corpus (gold pairs first); `options` go to
    eflomal_links."""
    return eflomal_links(sources + corpus[0], targets + corpus[1], **options)[:len(sources)]


def scores_against_gold(gold: list[tuple[set[Link], set[Link]]], aligned: dict[str, list[set[Link]]],
                        bootstrap: int = 0, reference: str | None = None) -> dict[str, dict]:
    """Each aligner's AER, precision, recall and link count; with `bootstrap` resamples also each AER's 95%
    interval and, for every aligner but `reference`, that of its difference from the reference's."""
    scores = {name: alignment_error_rate(gold, links) for name, links in aligned.items()}
    if bootstrap:
        for name, interval in bootstrap_aer(gold, aligned, reference=reference, samples=bootstrap).items():
            scores[name].update(interval)
    return scores


def table_row(name: str, result: dict, sentences: int, width: int, reference: str | None) -> str:
    row = (f"{name:<{width}}  AER {result['aer']:.4f}  precision {result['precision']:.4f}  "
           f"recall {result['recall']:.4f}  ({result['links']} links, {sentences} sentences)")
    if "aer_interval" in result:
        low, high = result["aer_interval"]
        row += f"  95% [{low:.4f}, {high:.4f}]"
    if "difference_interval" in result:
        low, high = result["difference_interval"]
        row += f"  minus {reference} [{low:+.4f}, {high:+.4f}], lower in {result['lower_share']:.0%}"
    return row

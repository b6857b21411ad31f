"""Class-name files: one class a line, its synonyms separated by ", " (docs/evaluation.md §2).

Read exactly as SCLIP's harness reads them (`get_cls_idx`): each line split on ", " and the newline
removed, nothing else stripped (so `cls_context60.txt`'s last line stays `wood `). Line i is class i;
every synonym is a query; a class is named by its first synonym. The standard files ship with the
package (`classes/cls_*.txt`, copied from SCLIP's `configs/`; `classes/clearclip/` holds the three
that ClearCLIP's repository changes, for its preset).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InputError

IGNORE_INDEX = 255  # ground-truth value that is never scored; also why a class file holds at most 255 classes
MAX_CLASSES = IGNORE_INDEX


@dataclass(frozen=True)
class ClassList:
    """The classes of a class file: `synonyms[i]` are class i's queries, first one its name."""

    synonyms: tuple[tuple[str, ...], ...]
    source: str  # the file it came from (a package file's name, or the path given)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(group[0] for group in self.synonyms)

    @property
    def queries(self) -> tuple[str, ...]:
        """Every synonym of every class, in file order (the softmax runs over these)."""
        return tuple(query for group in self.synonyms for query in group)

    @property
    def query_class(self) -> tuple[int, ...]:
        """For each query, the index of its class."""
        return tuple(index for index, group in enumerate(self.synonyms) for _ in group)

    def __len__(self) -> int:
        return len(self.synonyms)


def parse_class_text(text: str, source: str) -> ClassList:
    """A class file's content as SCLIP reads it; an `InputError` for an empty file, an empty line or
    more than 255 classes (class indices are written as uint8, 255 meaning ignore)."""
    # Python's text mode reads "\r\n" and "\r" as "\n"; SCLIP's readlines then keeps no empty last line
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise InputError(f"The class file {source} is empty; write one class a line.")
    groups = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise InputError(f"Line {number} of the class file {source} is empty; write one class a line "
                             "(synonyms separated by ', ').")
        groups.append(tuple(line.split(", ")))
    if len(groups) > MAX_CLASSES:
        raise InputError(f"The class file {source} has {len(groups)} classes; at most {MAX_CLASSES} are supported.")
    return ClassList(tuple(groups), source)


def packaged_class_file(name: str) -> str:
    """The text of a class file shipped with the package (`cls_voc21.txt`, `clearclip/cls_voc21.txt`)."""
    path = resources.files(__package__).joinpath("classes")
    for part in name.split("/"):
        path = path.joinpath(part)
    return path.read_text(encoding="utf-8")


def packaged_classes(name: str) -> ClassList:
    return parse_class_text(packaged_class_file(name), name)


def read_class_file(path: str | Path) -> ClassList:
    """A class file given on the command line (`--classes FILE`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"The class file {path} could not be read ({type(exc).__name__}); "
                         "give a UTF-8 text file, one class a line.") from None
    return parse_class_text(text, str(path))

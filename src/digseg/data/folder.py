"""A user's own data in the "folder-of-pairs" layout.

```
root/
  classes.txt        one class name per line (blank lines ignored); line index = class id
  images/<stem>.*    any of IMAGE_EXTENSIONS
  masks/<stem>.png   pixel value = class id, 255 = ignore
```
Images are paired with masks by stem; a mask without an image is ignored. The reader is `FolderPairs`
(registered as "folder", in `digseg.data.domains`); this module reads its `classes.txt`.
"""

from __future__ import annotations

import os
from pathlib import Path

from digseg.errors import DataError

IGNORE_INDEX = 255


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a `classes.txt`: one per line, whitespace stripped, blank lines skipped.

    Raises:
        DataError: the file is missing or unreadable, empty, lists a name twice, or lists more than
            255 classes (255 marks ignored pixels).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"class list not found: {p} (expected one class name per line)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class list {p}: {exc}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"class list {p} is empty; write one class name per line")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"class list {p} lists {n!r} twice")
        seen.add(n)
    if len(names) > IGNORE_INDEX:
        raise DataError(f"class list {p} lists {len(names)} classes; at most {IGNORE_INDEX} are "
                        f"supported because mask value {IGNORE_INDEX} means 'ignore'")
    return names

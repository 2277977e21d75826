"""Every public class and function documents what it takes, returns and raises (Google style).

The names checked are those in ``memory_blocks.__all__``, ``memory_blocks.functional.__all__`` and
``titans.__all__`` that are classes or functions; constants, registries and modules are skipped.

Rules, each checked for every such name and all violations reported at once:

1. It has a docstring.
2. If it takes arguments, its docstring has a section with an entry for every one of them: an
   entry is a line of the section's first indentation, ``name: description``, and a grouped
   ``q, k: ...`` documents both (a name merely mentioned inside another entry's text does not).
   The section is ``Args:``; a record (a dataclass or a ``NamedTuple``) may use ``Attributes:``
   instead (several such sections count as one). A class documents its arguments in the class
   docstring. The arguments of a function are its parameters (``self``/``cls`` excluded); those
   of a class are the parameters of the ``__init__`` it defines, or inherits from a class of
   ``memory_blocks``/``titans`` (one inherited from elsewhere, e.g. ``nn.Module``, ``Exception``
   or ``Protocol``, takes nothing of ours); those of a record are its ``__init__`` fields.
3. A function whose return annotation is present and not ``None`` has a ``Returns:`` (or
   ``Yields:``) section. Classes need none.
4. A function whose body raises (an ``raise X`` statement in its source; a bare re-``raise`` does
   not count) has a ``Raises:`` section.

A section runs from its header line (``Args:``) over the lines indented below it: it ends at the
first non-blank line indented no deeper than the header (the next section, or a plain paragraph).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator

import memory_blocks
import memory_blocks.functional
import titans

MODULES = (memory_blocks, memory_blocks.functional, titans)
OUR_PACKAGES = ("memory_blocks", "titans")
HEADER = re.compile(r"^(\s*)([A-Z][A-Za-z ]*):\s*$")


def public_objects() -> Iterator[tuple[str, object]]:
    """``(qualified name, object)`` for each class or function in the checked ``__all__`` lists, once."""
    seen: set[int] = set()
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{module.__name__}.{name}", obj


def sections(doc: str) -> dict[str, str]:
    """The text of each Google-style section of ``doc``, by header (``"Args"``, ``"Returns"``, ...)."""
    lines = inspect.cleandoc(doc).splitlines()
    found: dict[str, str] = {}
    index = 0
    while index < len(lines):
        match = HEADER.match(lines[index])
        if match is None:
            index += 1
            continue
        indent, title = len(match.group(1)), match.group(2)
        end = index + 1
        while end < len(lines):
            line = lines[end]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            end += 1
        found[title] = found.get(title, "") + "\n".join(lines[index + 1 : end]) + "\n"
        index = end
    return found


def is_record(cls: type) -> bool:
    """A dataclass or a ``NamedTuple``: its fields are its arguments and may be listed as ``Attributes:``."""
    return dataclasses.is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields"))


def ours(obj: object) -> bool:
    """Whether ``obj`` was defined in ``memory_blocks`` or ``titans``."""
    return (getattr(obj, "__module__", "") or "").split(".")[0] in OUR_PACKAGES


def parameter_names(function: Callable[..., object]) -> list[str]:
    """The parameters of ``function``, ``self`` and ``cls`` excluded."""
    return [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]


def class_arguments(cls: type) -> list[str]:
    """The arguments a class is constructed with (rule 2)."""
    if is_record(cls):
        if dataclasses.is_dataclass(cls):
            return [f.name for f in dataclasses.fields(cls) if f.init]
        return list(cls._fields)
    init = next((klass.__dict__["__init__"] for klass in cls.__mro__ if "__init__" in klass.__dict__), None)
    if init is None or not ours(init):
        return []
    return parameter_names(init)


def raises(function: Callable[..., object]) -> bool:
    """Whether the source of ``function`` has a ``raise X`` statement (docstrings and comments ignored)."""
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(function)))
    except (OSError, TypeError):
        return False
    return any(isinstance(node, ast.Raise) and node.exc is not None for node in ast.walk(ast.parse(source)))


def returns_something(function: Callable[..., object]) -> bool:
    """Whether ``function`` has a return annotation that is not ``None``."""
    annotation = inspect.signature(function).return_annotation
    return annotation not in (inspect.Signature.empty, None, type(None), "None")


def entry_names(section: str) -> set[str]:
    """The names an ``Args:``/``Attributes:`` section documents: the comma-separated words before the
    first colon of each entry line (the lines at the section's first indentation), so a grouped
    ``q, k: ...`` names both; a ``(type)`` after a name and ``*``/backticks around it are ignored."""
    lines = [line for line in section.splitlines() if line.strip()]
    if not lines:
        return set()
    indent = len(lines[0]) - len(lines[0].lstrip())
    names = set()
    for line in lines:
        if len(line) - len(line.lstrip()) != indent or ":" not in line:
            continue
        label = re.sub(r"\([^)]*\)", "", line.split(":", 1)[0])
        names.update(part.strip().strip("*`") for part in label.split(","))
    return names


def violations(qualname: str, obj: object) -> list[str]:
    """Every rule that ``obj`` breaks, one message each."""
    doc = inspect.getdoc(obj) if inspect.isfunction(obj) else obj.__dict__.get("__doc__")
    if not doc or not doc.strip():
        return [f"{qualname}: no docstring"]
    found = sections(doc)
    problems = []
    if inspect.isclass(obj):
        arguments = class_arguments(obj)
        allowed = ("Args", "Attributes") if is_record(obj) else ("Args",)
    else:
        arguments = parameter_names(obj)
        allowed = ("Args",)
    if arguments:
        documented = set().union(*(entry_names(found[title]) for title in allowed if title in found))
        if not any(title in found for title in allowed):
            problems.append(f"{qualname}: no {' or '.join(t + ':' for t in allowed)} section for {arguments}")
        else:
            missing = [name for name in arguments if name not in documented]
            if missing:
                problems.append(f"{qualname}: {'/'.join(t + ':' for t in allowed)} does not name {missing}")
    if inspect.isfunction(obj):
        if returns_something(obj) and "Returns" not in found and "Yields" not in found:
            problems.append(f"{qualname}: returns a value but has no Returns: section")
        if raises(obj) and "Raises" not in found:
            problems.append(f"{qualname}: raises but has no Raises: section")
    return problems


def test_public_names_are_checked() -> None:
    names = [name for name, _ in public_objects()]
    assert len(names) > 50, names  # the check must not silently find nothing
    assert "memory_blocks.NeuralMemory" in names and "titans.train" in names


def test_public_docstrings_document_args_returns_raises() -> None:
    problems = [problem for name, obj in public_objects() for problem in violations(name, obj)]
    assert not problems, f"{len(problems)} docstring violations:\n" + "\n".join(problems)

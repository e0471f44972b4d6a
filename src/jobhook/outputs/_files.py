"""Which values of a job's output are files, per backend profile."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from jobhook._models import JSON

__all__ = ["FileFinder", "any_url", "fal_files", "files_for", "openai_files", "replace_at"]

#: A place in a JSON value: the keys and list indexes that lead to it.
Path = tuple[str | int, ...]
#: ``finder(output) -> paths``: where the files are in a job's output, in a stable order.
FileFinder = Callable[[JSON], list[Path]]


def _is_file_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    head = value[:8].lower()
    return head.startswith(("http://", "https://", "data:"))


def _walk(value: JSON, path: Path) -> Iterator[tuple[Path, JSON]]:
    yield path, value
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _walk(value[key], (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, index))


def any_url(output: JSON) -> list[Path]:
    """Every string in ``output`` that is an ``http(s)`` URL or a ``data:`` URI.

    The rule for jobhook's contract (``{"images": [url, ...]}``), Cog and Replicate
    (a URL, or a list of them, or any object holding them), RunPod and the fake.
    """
    return [path for path, value in _walk(output, ()) if _is_file_url(value)]


def fal_files(output: JSON) -> list[Path]:
    """fal's File objects: the ``url`` of every object that has one (``images[].url``,
    ``video.url``, ``audio_file.url``); other strings, such as an echoed prompt, stay."""
    return [
        path
        for path, value in _walk(output, ())
        if path and path[-1] == "url" and _is_file_url(value)
    ]


def openai_files(output: JSON) -> list[Path]:
    """OpenAI's Responses: the ``result`` of each ``image_generation_call`` item (a
    base64 image, kept as its bytes), and any URL or ``data:`` URI."""
    found = any_url(output)
    for path, value in _walk(output, ()):
        if (
            isinstance(value, dict)
            and value.get("type") == "image_generation_call"
            and isinstance(value.get("result"), str)
        ):
            found.append((*path, "result"))
    return found


_BY_PROFILE: dict[str, FileFinder] = {"fal": fal_files, "openai": openai_files}


def files_for(backend: Any) -> FileFinder:
    """The file finder for a `jobhook.backends` profile (or its ``name``): `fal_files`
    for fal, `openai_files` for OpenAI, `any_url` for the others."""
    name = backend if isinstance(backend, str) else getattr(backend, "name", "")
    return _BY_PROFILE.get(name, any_url)


def value_at(output: JSON, path: Path) -> JSON:
    """The value at ``path`` in ``output``."""
    for step in path:
        output = output[step]
    return output


def replace_at(output: JSON, replacements: dict[Path, JSON]) -> JSON:
    """A copy of ``output`` with the value at each path replaced (the original is
    left as it is)."""
    if () in replacements:
        return replacements[()]
    if isinstance(output, dict):
        return {key: replace_at(value, _below(replacements, key)) for key, value in output.items()}
    if isinstance(output, list):
        return [replace_at(value, _below(replacements, i)) for i, value in enumerate(output)]
    return output


def _below(replacements: dict[Path, JSON], step: str | int) -> dict[Path, JSON]:
    return {path[1:]: value for path, value in replacements.items() if path and path[0] == step}

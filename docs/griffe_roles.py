"""Griffe extension for the API reference: Sphinx roles in mmcam's docstrings as links.

mmcam's docstrings are short prose with ``literals`` and Sphinx roles (:class:`X`, :func:`f`,
:mod:`m`, :meth:`m`, :data:`D`). This extension, loaded by mkdocstrings (``mkdocs.yml``),
rewrites each role into an optional cross-reference: a link where the target has a section in
the reference, plain code where it has none. A role whose target names nothing in the
package is logged as a warning, so ``mkdocs build --strict`` fails on a broken reference.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")


def _candidates(obj: griffe.Object, target: str) -> list[str]:
    """Full paths ``target`` may mean in ``obj``'s docstring: as written, then relative to
    the object, its class and its module (the way Sphinx resolves a role)."""
    scopes = []
    o: Any = obj
    while o is not None:
        scopes.append(o.path)
        o = o.parent
    return [target] + [f"{s}.{target}" for s in scopes]


def _member(root: griffe.Module, path: str) -> str | None:
    """Where the object ``path`` (inside ``root``) is defined (an import followed to its
    target), or None if ``path`` names nothing."""
    try:
        obj = root.get_member(path[len(root.path) + 1:])
        return obj.final_target.path if obj.is_alias else obj.path
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of the object ``target`` names, or None. A name the package exports
    lazily (listed in ``__all__``, served by a module ``__getattr__``) resolves to the
    submodule that defines it; a bare name found nowhere in scope, to the one object of the
    package with that name, if there is exactly one."""
    root = obj.package
    for path in _candidates(obj, target):
        if path == root.path:
            return path
        if not path.startswith(root.path + "."):
            continue
        found = _member(root, path)
        if found is not None:
            return found
        parent, _, name = path.rpartition(".")
        try:
            module = root if parent == root.path else root.get_member(parent[len(root.path) + 1:])
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        if not module.is_module or name not in (module.exports or ()):
            continue
        for sub in module.modules.values():
            if name in sub.members and not sub.members[name].is_alias:
                return f"{sub.path}.{name}"
    if "." not in target:  # a bare name not in scope: the one object of the package so named
        found = [o.path for o in _objects(root) if o.name == target]
        if len(found) == 1:
            return found[0]
    return None


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and every object defined inside it (imports left out)."""
    out = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            out += _objects(member)
    return out


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles into optional autorefs once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: self._link(obj, m), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)

    def _link(self, obj: griffe.Object, match: re.Match) -> str:
        target = re.sub(r"\s+", "", match.group(1))  # a role may be wrapped over two lines
        title = target.rsplit(".", 1)[-1] if match.group(0).count("~") else target
        path = _resolve(obj, target)
        if path is None:
            griffe.logger.warning("%s: docstring reference %s names nothing in the package",
                         obj.path, match.group(0))
            return f"`{title}`"
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'

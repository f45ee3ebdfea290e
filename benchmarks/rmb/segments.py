"""ray_perf.main() in segments: find the wheel's files, cut ``main()`` into
segments that each end with the statement that produces figures, and compile
it again with every segment wrapped in ``try`` (parent and child)."""

from __future__ import annotations

import ast
import importlib.util
import os


def wheel_paths() -> dict:
    """Files of the installed Ray wheel, found without importing ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ray is not installed (pip install ray)")
    root = list(spec.submodule_search_locations)[0]
    priv = os.path.join(root, "_private")
    paths = {
        "root": root,
        "perf": os.path.join(priv, "ray_perf.py"),
        "helpers": os.path.join(priv, "ray_microbenchmark_helpers.py"),
        "client": os.path.join(priv, "ray_client_microbenchmark.py"),
    }
    for key in ("perf", "helpers"):
        if not os.path.exists(paths[key]):
            raise RuntimeError(f"{paths[key]} not found in the installed Ray wheel")
    return paths


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name):
            return f.id
        if isinstance(f, ast.Attribute):
            return f.attr
    return None


def _timeit_names(node: ast.AST) -> list[str]:
    """First arguments of timeit(...) calls under node, in source order."""
    found = []
    for n in ast.walk(node):
        if _call_name(n) in ("timeit", "asyncio_timeit") and n.args:
            a = n.args[0]
            name = a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) \
                else f"<figure at line {n.lineno}>"
            found.append((n.lineno, n.col_offset, name))
    return [name for _l, _c, name in sorted(found)]


def client_figures(client_src: str | None) -> list[str]:
    """Figures of ray_client_microbenchmark.main(), in the order it runs them
    (inspect.getmembers: benchmark_* functions sorted by name)."""
    if not client_src:
        return []
    tree = ast.parse(client_src)
    funcs = sorted((n for n in tree.body if isinstance(n, ast.FunctionDef)
                    and n.name.startswith("benchmark_")), key=lambda n: n.name)
    out = []
    for f in funcs:
        out += _timeit_names(f)
    return out


def _read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return fh.read()


def _cut(body: list, cfigs: list[str]) -> tuple[list[dict], list[str]]:
    """(segments, statements left out) of main()'s body."""
    segments, cur, dropped = [], [], []
    for st in body:
        if isinstance(st, ast.Expr) and _call_name(st.value) == "check_optimized_build":
            dropped.append(f"line {st.lineno}: check_optimized_build()")
            continue
        cur.append(st)
        figs = _timeit_names(st)
        for n in ast.walk(st):
            if _call_name(n) == "client_microbenchmark_main":
                figs += cfigs
        if figs:
            segments.append({"stmts": cur, "figures": figs})
            cur = []
    if cur:
        segments.append({"stmts": cur, "figures": []})
    return segments, dropped


def plan(paths: dict) -> dict:
    """Cut ray_perf.main() into segments; return them with their figures."""
    perf_src = _read(paths["perf"])
    cfigs = client_figures(_read(paths["client"]))
    tree = ast.parse(perf_src, filename=paths["perf"])
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    if not mains:
        raise RuntimeError(f"no main() in {paths['perf']}")
    main = mains[0]
    body = list(main.body)
    ret = None
    if body and isinstance(body[-1], ast.Return):
        ret = body.pop()
    segments, dropped = _cut(body, cfigs)
    return {"tree": tree, "main": main, "ret": ret, "segments": segments,
            "dropped": dropped, "perf_src": perf_src}


def figure_list(pl: dict) -> list[tuple[str, int]]:
    return [(f, i) for i, s in enumerate(pl["segments"]) for f in s["figures"]]


def selected(name: str, only: list[str], skip: list[str]) -> bool:
    low = name.lower()
    if only and not any(o.lower() in low for o in only):
        return False
    return not any(s.lower() in low for s in skip)


def _wrap(i: int, seg: dict) -> ast.If:
    """One segment as ``if __mb_enter__(i): try: ... except ... finally: ...``,
    placed at the segment's own lines."""
    stmts = seg["stmts"]
    first, last = stmts[0], stmts[-1]
    tmpl = ast.parse(
        f"if __mb_enter__({i}):\n"
        "    try:\n"
        "        pass\n"
        "    except BaseException as _mb_exc:\n"
        f"        __mb_fail__({i}, _mb_exc)\n"
        "    finally:\n"
        f"        __mb_leave__({i})\n").body[0]
    want = ast.parse(f"if __mb_want__({i}):\n    pass\n").body[0]
    for t, at in ((tmpl, first), (want, last)):
        for n in ast.walk(t):
            if hasattr(n, "lineno"):
                n.lineno = n.end_lineno = at.lineno
                n.col_offset = n.end_col_offset = 0
        for n in (t, *[x for x in t.body if isinstance(x, ast.Try)]):
            n.end_lineno = last.end_lineno
    if seg["figures"]:
        want.body = [last]
        tmpl.body[0].body = stmts[:-1] + [want]
    else:
        tmpl.body[0].body = list(stmts)
    return tmpl


def transformed_main(pl: dict, filename: str):
    """Code object defining _mb_main(results=None): ray_perf.main, segmented.

    Each segment becomes::

        if __mb_enter__(i):
            try:
                <setup statements>
                if __mb_want__(i):
                    <the statement that produces the figures>
            except BaseException as _mb_exc:
                __mb_fail__(i, _mb_exc)
            finally:
                __mb_leave__(i)
    """
    main = pl["main"]
    new_body = [_wrap(i, seg) for i, seg in enumerate(pl["segments"])]
    new_body.append(pl["ret"] or ast.parse("return results").body[0])
    extra = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}
    fn = ast.FunctionDef(name="_mb_main", args=main.args, body=new_body,
                         decorator_list=[], returns=None, type_comment=None, **extra)
    ast.copy_location(fn, main)
    mod = ast.Module(body=[fn], type_ignores=[])
    ast.fix_missing_locations(mod)
    return compile(mod, filename, "exec")

"""The message schema (mpray/protocol.py): records, frames, and its documentation."""

from __future__ import annotations

import os
import pickle

import pytest

from mpray import protocol as P

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "protocol.md")


def test_docs_protocol_table_is_generated_from_the_schema():
    with open(DOC) as f:
        text = f.read()
    assert text == P.PROTOCOL_DOC_HEAD + P.protocol_table(), (
        "docs/protocol.md is out of date: python -m mpray.protocol > docs/protocol.md")


def test_opcodes_are_unique_and_fields_named():
    ops = [cls.OP for cls in P.KINDS.values()]
    assert len(ops) == len(set(ops)) and all(isinstance(op, int) for op in ops)
    for op, cls in P.KINDS.items():
        assert cls.OP == op and cls.CHANNEL and cls.DOC
        assert len(set(cls.FIELDS)) == len(cls.FIELDS)


def _sample(cls):
    return cls(*[(i + 1) * 10 for i in range(len(cls.FIELDS))])


@pytest.mark.parametrize("cls", sorted(P.KINDS.values(), key=lambda c: c.OP),
                         ids=lambda c: c.__name__)
def test_every_message_survives_a_frame_typed(cls):
    nested = {"Submit", "Fwd", "RTask", "ToRank", "RNode", "RStream", "LineageIs"}
    if cls.__name__ in nested:
        inner = (P.TaskSpec(1, 2, "f", b"a", (), 1, (("CPU", 1.0),), 0, False, (), None)
                 if "spec" in cls.FIELDS else P.KillActor(5, True))
        field = "spec" if "spec" in cls.FIELDS else "msg"
        m = cls(**{f: (inner if f == field else 7) for f in cls.FIELDS})
    else:
        m = _sample(cls)
    frame = P.encode([m])
    raw = pickle.loads(frame)[0]
    assert type(raw) is tuple  # plain on the wire: a tuple subclass pickles 4x slower
    (back,) = P.decode(frame)
    if cls is P.LineageIs:  # (its spec may be None: it stays None)
        assert P.decode(P.encode([P.LineageIs(5, None, "why")]))[0].spec is None
    assert type(back) is cls and back == m
    for f in cls.FIELDS:
        assert getattr(back, f) == getattr(m, f)
    if cls.__name__ in nested:
        inner_back = getattr(back, "spec" if "spec" in cls.FIELDS else "msg")
        assert type(inner_back) is type(inner) and inner_back == inner


def test_records_have_defaults_replace_and_names():
    e = P.Exec(1, 2, None, "f", b"a", (), 1, (), False, 0)
    assert e.epoch is None and e.OP == P.Exec.OP and e[0] == P.Exec.OP
    assert e._replace(epoch=3).epoch == 3 and e._asdict()["name"] == "f"
    assert "Exec(tid=1" in repr(e)
    spec = P.TaskSpec(10, 2, "f", b"a", (), 3, (), 0, False, (), None)
    assert (spec.lease, spec.actor, spec.method, spec.create) == (False, None, None, None)
    assert list(P.spec_returns(spec)) == list(P.return_ids(10, 3)) == [11, 12, 13]
    assert P.Exec.from_items(tuple(e)) == e and type(P.Exec.from_items(tuple(e))) is P.Exec
    with pytest.raises(TypeError):
        P.Exec(1, 2)  # missing fields are an error at the sender


def test_ids_pack_rank_and_process():
    oid = P.id_base(3, 17) + 42
    assert P.id_rank(oid) == 3 and P.id_proc(oid) == 17 and P.id_hex(oid) == format(oid, "016x")

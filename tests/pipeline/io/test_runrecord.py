"""The run record round-trips through the JSON isovol has always written, records of earlier versions (no
generation, no state, nothing but a state) still load, and anything else is a damaged record, never a crash."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from isovol.pipeline.io.runrecord import DamagedRecord, Owner, RunRecord, RunState, owning

#: a record as isovol wrote it before the record was typed (keys sorted, indent 1)
WRITTEN = {"components": {"factor": 4, "method": {"name": "cubic"}}, "generation": "0123456789abcdef",
           "hash": "ab" * 32, "plan": {"blocks": [5, 2, 2]}, "state": "complete", "tasks": 20}


def test_round_trip_keeps_the_json_on_disk():
    record = RunRecord.from_json(json.dumps(WRITTEN))
    assert record == RunRecord(hash="ab" * 32, components=WRITTEN["components"], tasks=20,
                               plan=WRITTEN["plan"], state=RunState.COMPLETE, generation="0123456789abcdef")
    assert record.to_json() == json.dumps(WRITTEN, indent=1, sort_keys=True), "same keys, same text"
    assert RunRecord.from_json(record.to_json()) == record
    assert RunRecord.from_json(record.to_json().encode()) == record, "bytes as a filesystem returns them"


def test_a_record_from_before_generations_loads_and_stays_without_one():
    old = {k: v for k, v in WRITTEN.items() if k != "generation"}
    record = RunRecord.from_json(json.dumps(old))
    assert record.generation is None and record.tag == "ab" * 32, "its markers carry the bare hash"
    assert json.loads(record.with_state(RunState.RUNNING).to_json()) == {**old, "state": "running"}


def test_tag_carries_the_generation():
    record = RunRecord.from_json(json.dumps(WRITTEN))
    assert record.tag == f"{'ab' * 32}:0123456789abcdef"


def test_with_state_changes_only_the_state():
    record = RunRecord.from_json(json.dumps(WRITTEN))
    deleting = record.with_state(RunState.DELETING)
    assert deleting.state is RunState.DELETING and record.state is RunState.COMPLETE
    assert json.loads(deleting.to_json()) == {**WRITTEN, "state": "deleting"}


def test_states():
    assert [s.value for s in RunState] == ["creating", "created", "running", "complete", "incomplete", "deleting"]
    assert {s for s in RunState if s.unfinished} == {RunState.CREATING, RunState.DELETING}
    assert RunState.COMPLETE == "complete" and RunState("deleting") is RunState.DELETING


def test_partial_records_of_earlier_runs_load():
    """An earlier isovol marked a damaged record "deleting" by writing the state alone; a record may lack one."""
    only_state = RunRecord.from_json('{"state": "deleting"}')
    assert only_state.state is RunState.DELETING and not only_state.readable and only_state.tasks == 0
    no_state = RunRecord.from_json(json.dumps({k: v for k, v in WRITTEN.items() if k != "state"}))
    assert no_state.state is None and no_state.readable
    assert "state" not in json.loads(no_state.to_json())


@pytest.mark.parametrize("text", ["{", "", "[]", '"complete"', '{"state": "finished"}', '{"tasks": "many"}',
                                  '{"hash": 5}', '{"components": []}', '{"generation": 7}', b"\xff\xfe"])
def test_anything_else_is_a_damaged_record(text):
    with pytest.raises(DamagedRecord):
        RunRecord.from_json(text)


def test_the_stand_in_for_a_damaged_record_names_no_run():
    stand_in = RunRecord.unreadable()
    assert not stand_in.readable and stand_in.state is None and stand_in.tag == ""
    assert json.loads(stand_in.with_state(RunState.DELETING).to_json())["state"] == "deleting"


# -- the owner of an output being created or deleted -------------------------------------------------------


def test_the_owner_round_trips_and_is_dropped_with_the_next_state():
    with owning() as owner:
        record = RunRecord.from_json(json.dumps(WRITTEN)).with_state(RunState.CREATING, owner)
        assert RunRecord.from_json(record.to_json()) == record
        assert json.loads(record.to_json())["owner"] == {"host": socket.gethostname(), "pid": os.getpid(),
                                                         "token": owner.token, "since": owner.since,
                                                         "pidns": owner.pidns}
    assert record.with_state(RunState.CREATED).owner is None and "owner" not in json.loads(
        record.with_state(RunState.CREATED).to_json())


@pytest.mark.parametrize("owner", ['"me"', '{"host": "h"}', '{"host": "h", "pid": "x", "token": "t", "since": 1}',
                                   '{"host": 5, "pid": 1, "token": "t", "since": 1}'])
def test_a_damaged_owner_is_a_damaged_record(owner):
    with pytest.raises(DamagedRecord):
        RunRecord.from_json(f'{{"hash": "ab", "state": "creating", "owner": {owner}}}')


def test_an_owner_in_this_process_is_alive_while_it_works_even_in_another_thread():
    seen = {}
    with owning() as owner:
        thread = threading.Thread(target=lambda: seen.update(alive=owner.alive()))
        thread.start()
        thread.join()
        assert owner.alive() is True and seen["alive"] is True
    assert owner.alive() is False, "left (returned, raised, interrupted): as dead as a killed process"


def test_an_owner_process_is_alive_until_it_ends():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.05)
        owner = replace(Owner.new(), pid=proc.pid)
        assert owner.alive() is True
        assert replace(owner, since=owner.since - 3600).alive() is False, "a later process with a reused pid"
    finally:
        proc.kill()
        proc.wait()
    assert owner.alive() is False


def test_an_owner_on_another_host_cannot_be_asked():
    assert replace(Owner.new(), host="elsewhere.example").alive() is None
    assert replace(Owner.new(), pidns="pid:[1]").alive() is None, "another container (pid namespace)"

"""Where a service's CPU goes: py-spy's collapsed stacks summed by part (protege.profiles),
and the supervisor's py-spy launch (it records the processes it starts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protege.profiles import Profile, part_of
from protege.supervisor import profiled

ROOT = (
    "_run_module_as_main (<frozen runpy>:198);_run_code (<frozen runpy>:88);<module> (services/scorer/__main__.py:60)"
)
RAW = f"""{ROOT};run_service (protege/service.py:39);Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:287) 60
{ROOT};run_service (protege/service.py:39);Encoder.feed (protege/student/runtime.py:160);Tokenizer.encode_batch (tokenizers/__init__.py:1) 10
{ROOT};run_service (protege/service.py:39);Processor.commit (protege/kafka.py:484);Sender._send_produce_req (aiokafka/producer/sender.py:288) 15
{ROOT};run_service (protege/service.py:39);Processor.decode (protege/kafka.py:464);model_validate_json (pydantic/main.py:700) 5
{ROOT};run_service (protege/service.py:39);Scorer.handle (services/scorer/handler.py:99) 10
{ROOT};run_service (protege/service.py:39);BaseEventLoop._run_once (asyncio/base_events.py:1898);EpollSelector.select (selectors.py:468) 400
{ROOT};_find_and_load (<frozen importlib._bootstrap>:1176);_compile_bytecode (<frozen importlib._bootstrap_external>:729) 30
{ROOT};run_service (protege/service.py:39);Student.__init__ (protege/student/runtime.py:227);InferenceSession._create_inference_session (onnxruntime/capi/onnxruntime_inference_collection.py:584) 20
 7
"""


def test_samples_go_to_the_innermost_known_part_and_waiting_and_start_up_apart() -> None:
    p = Profile.parse(RAW)
    assert (p.samples, p.idle, p.startup) == (100, 407, 50)
    assert p.shares() == {
        "ONNX Runtime (the model)": 0.60,
        "aiokafka (Kafka client)": 0.15,
        "tokenizer": 0.10,
        "protege": 0.10,
        "pydantic (decode, encode)": 0.05,
    }
    assert part_of(["main (x.py:1)", "helper (y.py:2)"]) == "other"
    assert p.leaves.most_common(1)[0][1] == 60


@pytest.mark.skipif(
    not Path(sys.executable).with_name("py-spy").exists(), reason="py-spy (the dev extra) is not installed"
)
def test_a_profiled_process_stops_on_sigterm_and_its_samples_are_written(tmp_path: Path) -> None:
    script = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True: sum(range(10000))\n"
    out = tmp_path / "busy.txt"
    proc = subprocess.Popen(profiled([sys.executable, "-c", script], out), start_new_session=True)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGTERM)  # as Supervisor.stop does: the whole group
    assert proc.wait(timeout=30) == 0
    assert Profile.read(out).samples > 0

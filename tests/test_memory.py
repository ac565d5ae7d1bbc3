"""Peak memory per phase: a real process tree, and the Docker stats shape the container path reads."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from factory.memory import MIB, MemoryProfile, sample_from_docker_stats

ALLOCATE = """
import sys, time
ballast = bytearray(80 * 1024 * 1024)  # touched: counts in RSS
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
print("ready", flush=True)
time.sleep(30)
"""


def test_peak_of_a_process_tree_is_attributed_to_its_phase() -> None:
    # A parent whose child allocates: the whole tree is what a pod pays for.
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys; subprocess.run([sys.executable, '-c', {ALLOCATE!r}])"],
                              stdout=subprocess.PIPE, text=True)
    try:
        with MemoryProfile.of_process(parent.pid) as memory:
            with memory.phase("idle"):
                time.sleep(0.2)
            assert parent.stdout.readline().strip() == "ready"
            with memory.phase("load") as load:
                deadline = time.monotonic() + 30  # sampling cadence is the machine's business: wait, bounded
                while load.samples < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
        assert memory.phases["load"].rss >= 80 * MIB
        assert memory.phases["load"].samples >= 3
        assert memory.peak_bytes == max(memory.phases["idle"].rss, memory.phases["load"].rss)
        assert memory.report()["sampler"] == "psutil process tree"
    finally:
        parent.kill()
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)


def test_docker_stats_give_the_cgroup_working_set() -> None:
    # The shape of GET /containers/{id}/stats?stream=false on cgroup v2 (fields we read).
    stats = {"memory_stats": {"usage": 300 * MIB, "limit": 8 * 1024 * MIB,
                              "stats": {"inactive_file": 40 * MIB, "anon": 250 * MIB, "file": 45 * MIB}}}
    sample = sample_from_docker_stats(stats)
    assert (sample.rss, sample.uss) == (260 * MIB, 250 * MIB)


def test_docker_stats_of_a_stopped_container_are_skipped() -> None:
    assert sample_from_docker_stats({"memory_stats": {}}) is None


@pytest.mark.parametrize("layout, usage_file, stat", [
    ("memory/docker/{id}", "memory.usage_in_bytes", "total_inactive_file 4194304\ntotal_rss 104857600\n"),
    ("system.slice/docker-{id}.scope", "memory.current", "inactive_file 4194304\nanon 104857600\n"),
])
def test_cgroup_files_give_the_working_set_docker_stats_shows(tmp_path, layout: str, usage_file: str,
                                                              stat: str) -> None:
    from factory.memory import cgroup_dir, cgroup_sample

    folder = tmp_path / layout.format(id="abc123")
    folder.mkdir(parents=True)
    (folder / usage_file).write_text(str(150 * MIB))
    (folder / "memory.stat").write_text(stat)
    assert cgroup_dir("abc123", tmp_path) == folder
    assert cgroup_dir("other", tmp_path) is None
    sample = cgroup_sample(folder)
    assert (sample.rss, sample.uss) == (146 * MIB, 100 * MIB)

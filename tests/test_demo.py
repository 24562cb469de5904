from tests.nodes import run_cli


def test_demo_federates_two_nodes_and_keeps_local_facts_home(tmp_path):
    res = run_cli("demo", cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "4 new facts, 0 rejected" in out
    assert "local and team facts stayed on alpha: yes" in out
    assert "hash chain intact" in out and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself

"""edgec behaves like a Unix tool when its reader goes away."""

import subprocess


def test_closed_stdout_ends_quietly(edgec_bin, models_dir):
    """`edgec inspect --json MODEL` with its stdout already closed: the first
    write ends edgec by SIGPIPE, as other tools end, with no panic."""
    model = models_dir / "smollm2-135m-q4_1.gguf"
    proc = subprocess.Popen([str(edgec_bin), "inspect", "--json", str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before edgec can write anything
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert "panicked" not in err, err
    assert code == -13, (code, err)

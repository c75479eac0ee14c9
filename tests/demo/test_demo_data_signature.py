"""A demo variant trained on other data than the data root now holds (the stand-ins, before a rerun's teacher
stage succeeded; or a run from before signatures were recorded) is trained again; one trained on the same data
is kept."""

import json
import os

from textbooks import demo


def _write_manifest(root, role, payload):
    os.makedirs(os.path.join(root, role), exist_ok=True)
    with open(os.path.join(root, role, "manifest.json"), "w") as f:
        json.dump(payload, f)


def test_a_variant_is_trained_again_only_when_its_data_changed(tmp_path):
    data = str(tmp_path / "data")
    _write_manifest(data, "synthetic_textbooks", {"stand_in": "python docs"})
    _write_manifest(data, "web_filtered", {"stand_in": None})
    run, ev = str(tmp_path / "runs" / "v"), str(tmp_path / "eval" / "v")
    for d in (run, ev):
        os.makedirs(d)
        open(os.path.join(d, "kept.txt"), "w").close()

    stand_ins = demo.data_signature(data)
    demo._reset_if_data_changed(stand_ins, run, ev)  # a run without a recorded signature: trained again
    assert not os.path.exists(os.path.join(run, "kept.txt")) and not os.path.exists(ev)
    open(os.path.join(run, "checkpoint"), "w").close()
    demo._reset_if_data_changed(stand_ins, run, ev)  # same data: kept
    assert os.path.exists(os.path.join(run, "checkpoint"))

    _write_manifest(data, "synthetic_textbooks", {"stand_in": None, "meta": {"teacher": "smollm2"}})
    generated = demo.data_signature(data)
    assert generated != stand_ins
    demo._reset_if_data_changed(generated, run, ev)  # the teacher's data replaced the stand-ins
    assert not os.path.exists(os.path.join(run, "checkpoint"))
    assert open(os.path.join(run, "data_signature.txt")).read().strip() == generated


def test_the_common_heldout_mixture_follows_its_roles_and_vocabulary():
    """A second demo in the same process with other roles gets its own held-out mixture, not the first one's."""
    import seqio

    both = demo.register_heldout(["web_filtered", "code_filtered"], "spm8k")
    one = demo.register_heldout(["web_filtered"], "spm8k")
    assert demo.register_heldout(["code_filtered", "web_filtered"], "spm8k") == both != one
    tasks = {n: sorted(t.name for t in seqio.get_mixture_or_task(n).tasks) for n in (both, one)}
    assert tasks == {both: ["code_filtered_spm8k", "web_filtered_spm8k"], one: ["web_filtered_spm8k"]}

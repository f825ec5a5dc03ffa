"""Does the suite still catch the bugs it was written to catch? Each mutation below breaks one line of mt/ in a
copy of the checkout and runs the tests that should see it; a mutation the tests pass is reported as missed.

    python tests/mutations.py [NAME ...]      (all of them without names; docs/testing.md has the results)

Exits 1 if any mutation is missed. Run it alone: it launches the same training runs the suite does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("attention-scale", "mt/attention.py", "/ math.sqrt(q.size(-1))", "/ q.size(-1)",
             ("tests/test_attention.py::test_matches_float64_reference_on_random_shapes",)),
    Mutation("shift-att-rows", "mt/alignment/model_links.py",
             "item.matrix[1:] if self.source.shift else item.matrix[:-1]",
             "item.matrix[:-1] if self.source.shift else item.matrix[1:]",
             ("tests/test_align_command.py::test_a_copy_model_links_each_word_to_itself_at_the_step_that_outputs_it",
              "tests/test_align_command.py::test_a_copy_model_links_each_word_to_the_next_at_the_step_that_reads_it")),
    Mutation("grow-diag-or-to-and", "mt/alignment/links.py",
             "(new[0] not in src_aligned or new[1] not in tgt_aligned)",
             "(new[0] not in src_aligned and new[1] not in tgt_aligned)",
             ("tests/test_align_command.py::test_symmetrization_rules_on_a_hand_worked_example",)),
    Mutation("resume-without-random-state", "mt/trainer.py", "        restore_random_state(state)\n",
             "        pass\n",
             ("tests/test_training.py::test_resumed_run_with_averaging_and_sampling_equals_an_uninterrupted_one",)),
    Mutation("ddp-loss-not-times-world-size", "mt/trainer.py", "loss / all_tokens * self.world.size",
             "loss / all_tokens", ("tests/test_distributed.py",)),
    Mutation("stale-partial-writes-kept", "mt/checkpoint.py", "        remove_partial_writes(self.folder)\n",
             "        pass\n",
             ("tests/test_crash_safety.py::test_runs_killed_at_random_moments_and_in_a_save_resume_to_the_"
              "uninterrupted_weights",)),
    Mutation("no-atomic-replace", "mt/files.py", "        os.replace(tmp, path)\n", "        pass\n",
             ("tests/test_checkpoint.py::test_round_trip_keeps_tensors_numbers_and_bytes",)),
    Mutation("hf-export-without-sin-cos-permutation", "mt/huggingface.py",
             "return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])",
             "return torch.arange(d_model)",
             ("tests/test_huggingface.py::test_exported_log_probabilities_equal_ours_in_float64",)),
    Mutation("clip-norm-ignored", "mt/trainer.py", 'clip if clip > 0 else float("inf")', 'float("inf")',
             ("tests/test_training.py::test_clip_norm_zero_leaves_gradients_unclipped",)),
    Mutation("length-penalty-constant", "mt/search.py", "((5.0 + length) / 6.0)", "((5.0 + length) / 5.0)",
             ("tests/test_search.py",)),
    Mutation("signal-stop-without-save", "mt/trainer.py", "            self._save()\n            writer.close()",
             "            writer.close()",
             ("tests/test_crash_safety.py::test_ctrl_c_or_sigterm_saves_last_pt_and_a_run_resumed_after_ctrl_c_"
              "ends_where_an_uninterrupted_one_does",)),
    Mutation("launched-process-tears-down", "mt/distributed.py", "    os._exit(0)", "    return",
             ("tests/test_distributed.py::test_a_launched_process_ends_without_the_teardown_once_everything_is_"
              "written",)),
    Mutation("dropout-words-of-63-random-bits", "mt/dropout.py", ".random_(-(1 << 63), None)", ".random_()",
             ("tests/test_dropout.py",)),
    Mutation("loss-gradient-on-padding", "mt/loss.py", "grad[rows] = block.grad.mul_(block.keep)",
             "grad[rows] = block.grad", ("tests/test_loss.py",)),
    Mutation("rdrop-second-pass-kl-gradient-sign", "mt/loss.py", "(q_mean - difference)", "(difference - q_mean)",
             ("tests/test_loss.py",)),
    Mutation("rdrop-normalized-by-one-pass", "mt/trainer.py", "self.device)[0] * passes", "self.device)[0]",
             ("tests/test_training.py::test_rdrop_without_dropout_is_the_plain_step_and_with_dropout_trains_on_its"
              "_divergence",)),
    Mutation("distill-kl-gradient-sign", "mt/loss.py", "weight * (block.probs - teacher_probs)",
             "weight * (teacher_probs - block.probs)", ("tests/test_loss.py",)),
    Mutation("distill-teacher-never-updated", "mt/distillation.py", "        if self.copy is None:\n"
             "            self.copy = copy.deepcopy(self.model).eval().requires_grad_(False)\n"
             "        torch._foreach_copy_(",
             "        if self.copy is None:\n"
             "            self.copy = copy.deepcopy(self.model).eval().requires_grad_(False)\n"
             "        if False:\n            torch._foreach_copy_(",
             ("tests/test_training.py::test_distillation_from_the_moving_average_trains_on_its_divergence",)),
]


def copy_of_checkout(into: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source, target = ROOT / name, into / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def is_caught(mutation: Mutation) -> bool:
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as folder:
        copy = Path(folder)
        copy_of_checkout(copy)
        path = copy / mutation.file
        text = path.read_text(encoding="utf-8")
        if text.count(mutation.original) != 1:
            sys.exit(f"{mutation.file}: the line that mutation {mutation.name} changes is gone or not unique; "
                     "update tests/mutations.py")
        path.write_text(text.replace(mutation.original, mutation.mutated), encoding="utf-8")
        # The copy's mt/ comes first, for pytest and for the command lines the tests launch.
        env = {**os.environ, "PYTHONPATH": str(copy)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider",
                              *mutation.tests], cwd=copy, env=env, capture_output=True, text=True)
        return run.returncode != 0


def main(names: list[str]) -> int:
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown mutation(s) {', '.join(unknown)}; known: {', '.join(known)}")
    missed = []
    for mutation in [known[n] for n in names] or MUTATIONS:
        caught = is_caught(mutation)
        print(f"{'caught' if caught else 'MISSED'}  {mutation.name}  ({mutation.file})", flush=True)
        if not caught:
            missed.append(mutation.name)
    print(f"{len(missed)} missed" if missed else "every mutation caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

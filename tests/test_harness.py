"""Which settings make evaluation rows reusable across runs."""

from memjax.eval.config import EvalConfig
from memjax.eval.harness import budget_tokens, fingerprint
from memjax.sharding import MeshConfig


def test_fingerprint_ignores_which_rows_are_asked_for_but_not_how_they_are_computed():
  base = EvalConfig()
  same = EvalConfig(policies=["full", "h2o"], budgets=[0.1], context_tokens=[4000],
                    perplexity=True, batch_size=2, output_dir="/tmp/x", name="other", notes="n",
                    mesh=MeshConfig(axes={"data": 2, "fsdp": 1, "tensor": 4}))
  assert fingerprint(same) == fingerprint(base)
  for changed in (EvalConfig(n_cases=9), EvalConfig(seed=1), EvalConfig(query_aware=True),
                  EvalConfig(prefill_chunk=256), EvalConfig(budget_schedule="pyramid")):
    assert fingerprint(changed) != fingerprint(base)


def test_budget_fractions_and_token_counts():
  assert budget_tokens(0.25, 2000) == 500
  assert budget_tokens(0.125, 1000) == 125
  assert budget_tokens(300, 2000) == 300

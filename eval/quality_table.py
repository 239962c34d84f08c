"""Rows of eval/quality.py as names and a Markdown table."""


def sampler_name(row: dict) -> str:
  """'<sampler>_<N>steps[_w<w>]'."""
  w = f"_w{row['guidance_weight']:g}" if row["guidance_weight"] else ""
  return f"{row['sampler']}_{row['steps']}steps{w}"


def row_name(row: dict) -> str:
  """'<model>_ckpt<step>_<sampler>_<N>steps[_w<w>]'."""
  return f"{row['model']}_ckpt{row['checkpoint_step']}_{sampler_name(row)}"


HEADERS = {"model": "model", "checkpoint_step": "ckpt", "sampler": "sampler", "steps": "steps",
           "guidance_weight": "w", "nfe": "NFE", "seconds_per_image": "s/image",
           "fidelity_psnr": "PSNR (dB)", "fidelity_mse": "MSE"}
METRIC_COLUMNS = ("FID", "IS", "fidelity_psnr", "fidelity_mse")
# Training cost of a pipeline part (commands/pipeline.py), after the metrics.
COST_COLUMNS = ("train_updates", "teacher_evaluations", "train_seconds")
HEADERS.update(train_updates="updates", teacher_evaluations="teacher evals",
               train_seconds="train s")


def table_columns(rows) -> list[str]:
  """The descriptive columns, then the metrics the rows hold (FD-<dataset> first)."""
  present = {k for row in rows for k in row}
  fd = sorted(k for k in present if k.startswith("FD-"))
  return (list(HEADERS)[:7] + fd + [k for k in METRIC_COLUMNS + COST_COLUMNS if k in present])


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def format_table(rows, columns=None) -> str:
  """A Markdown table of `rows` (default columns: `table_columns(rows)`)."""
  columns = columns or table_columns(rows)
  lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def format_spread_table(summary) -> str:
  """A Markdown table of eval.report.seed_summary rows: 'mean ± std' per metric."""
  columns = [c for c in table_columns(summary) if c != "seconds_per_image"]
  spread = lambda r, c: (f"{r[c]:.4g} ± {r[c + '_std']:.2g}" if f"{c}_std" in r
                         else _cell(r.get(c)))
  lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " | seeds |",
           "|" + "|".join("---" for _ in columns) + "|---|"]
  lines += ["| " + " | ".join(spread(r, c) for c in columns) + f" | {r['seeds']} |"
            for r in summary]
  return "\n".join(lines)

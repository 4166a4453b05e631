"""Convert a PyTorch / safetensors checkpoint into our ``.npz`` variables (no torch needed).

  python -m common.convert --checkpoint=resnet18-f37072fd.pth --model=resnet18 --out=r18.npz
  python -m common.convert --checkpoint=mbv2.safetensors --model=mobilenet_v2 --out=mbv2.npz \
      [--widths='{"stem": 32, ...}'] [--num_classes=1000] [--model_kwargs='{"strides": [...]}']

Reads the checkpoint with ``common.pretrained.read_state_dict`` (torch zip ``.pth``/``.pt``, a
state dict nested under ``state_dict`` / ``model`` / ... or ``module.``-prefixed, or
``.safetensors``), maps it through the model family's name map (``common.pretrained.LAYOUTS``),
prints the matched, missing, unexpected and dropped (``num_batches_tracked``) keys, and writes
``{'params', 'batch_stats'}`` in the layout ``common.pretrained.load_pretrained`` reads (so
``--config.init_checkpoint=OUT.npz`` uses it). ``--num_classes`` defaults to the checkpoint's
classifier width, ``--widths`` to the model's default (torchvision) widths.

Exit status 2 with one ``error: ...`` line on stderr for bad input: unknown model, unreadable
file, bad JSON, or a checkpoint with missing or mis-shaped keys (the line lists them; nothing is
written then). Unexpected keys are printed but allowed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from common import pretrained


def print_report(report: Dict[str, Any], verbose: bool, out=None) -> None:
  """Counts per category, and the keys of every category except ``matched`` (all if verbose)."""
  out = out or sys.stdout
  def show(title: str, items: List[Any]):
    print(f'{title}: {len(items)}', file=out)
    for it in items:
      print(f'  {it}', file=out)

  print(f'layout: {report["layout"]} ({report["source"]})', file=out)
  if verbose:
    show('matched', report['matched'])
  else:
    print(f'matched: {len(report["matched"])}', file=out)
  show('missing', report['missing'])
  show('mis-shaped', [f'{k}: torch {list(s)} -> {list(c)}, model wants {list(w)}'
                      for k, s, c, w in report['mismatched']])
  show('unexpected', report['unexpected'])
  print(f'dropped (no counterpart): {len(report["dropped"])}', file=out)


def _json_arg(name: str, value: str):
  if not value:
    return None
  try:
    return json.loads(value)
  except ValueError as e:
    raise ValueError(f'--{name} must be JSON; got {value!r} ({e})') from e


def main(argv: Optional[List[str]] = None) -> int:
  """CLI entry point (module docstring); returns the exit status."""
  ap = argparse.ArgumentParser(prog='python -m common.convert',
                               description=__doc__.split('\n')[0])
  ap.add_argument('--checkpoint', required=True, help='.pth / .pt (torch zip) or .safetensors')
  ap.add_argument('--model', required=True,
                  help='zoo model name with a PyTorch layout: ' + ', '.join(sorted(
                      pretrained.LAYOUTS)))
  ap.add_argument('--out', required=True, help='output .npz')
  ap.add_argument('--num_classes', type=int, default=None,
                  help='classifier outputs (default: read from the checkpoint)')
  ap.add_argument('--widths', default='', help='JSON width config (default: the model default)')
  ap.add_argument('--model_kwargs', default='',
                  help='JSON model options, e.g. {"classifier_as_conv": true}')
  ap.add_argument('-v', '--verbose', action='store_true', help='also list the matched keys')
  args = ap.parse_args(argv)
  try:
    if not args.out.endswith('.npz'):
      raise ValueError(f'--out must end in .npz; got {args.out!r}')
    widths = _json_arg('widths', args.widths)
    kwargs = _json_arg('model_kwargs', args.model_kwargs) or {}
    if not isinstance(kwargs, dict):
      raise ValueError(f'--model_kwargs must be a JSON object; got {args.model_kwargs!r}')
    pretrained.layout_of(args.model)
    sd = pretrained.read_state_dict(args.checkpoint)
    variables, report = pretrained.convert_state_dict(
        sd, args.model, num_classes=args.num_classes, widths=widths, model_kwargs=kwargs)
  except pretrained.ConversionError as e:
    if 'layout' in e.report:
      print_report(e.report, args.verbose)
    print(f'error: {str(e).replace(" (full lists in .report)", " (all listed above)")}',
          file=sys.stderr)
    return 2
  except (ValueError, TypeError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print_report(report, args.verbose)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  pretrained.save_variables_npz(args.out, variables)
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

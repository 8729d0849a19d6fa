"""``gateway`` command line: serve | mock-upstream | policy | keys | report | prices."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from gateway import jsonutil
from gateway.config.yamlsource import ConfigError


def _config_arg(p: argparse.ArgumentParser) -> None:
    from gateway.server import default_config_path

    p.add_argument("--config", default=default_config_path(), help="gateway.yaml (env GATEWAY_CONFIG)")


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    try:
        return serve(args.config, args.host, args.port, args.workers)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2


def cmd_mock(args: argparse.Namespace, rest: list[str]) -> int:
    from gateway.mock_upstream import main as mock_main

    return mock_main(rest)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.config.load import load_config

    failed = False
    for path in args.files:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            failed = True
            print(f"{path}: INVALID")
            for problem in exc.problems:
                print(f"  {problem}")
            continue
        print(
            f"{path}: valid ({len(cfg.models)} models, {len(cfg.teams)} teams, {len(cfg.rules.rules)} rules)"
        )
    return 1 if failed else 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from gateway.config.load import load_config
    from gateway.metering.pricing import cost_upper_bound_nano, nano_to_usd_str
    from gateway.policy.engine import Facts

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    tags = dict(t.split("=", 1) for t in args.tag if "=" in t)
    facts = Facts(
        team=args.team,
        model=args.model,
        tags=tags,
        max_tokens=args.max_tokens,
        has_tools=args.tools,
        has_images=args.images,
        stream=args.stream,
        budget_used=args.budget_used,
        prompt_tokens_fn=lambda: args.prompt_tokens,
        prompt_text_fn=lambda: args.prompt or "",
        now=datetime.now(UTC),
    )
    decision = cfg.rules.decide(facts, explain=True)
    print(
        f"team={args.team} model={args.model} prompt_tokens={args.prompt_tokens} "
        f"budget_used={args.budget_used} tags={tags}"
    )
    for line in decision.trace:
        print(f"  {line}")
    if decision.deny:
        print(f"=> DENY: {decision.deny}")
        return 0
    print(f"=> rule: {decision.rule}")
    print(f"=> chain: {' -> '.join(decision.chain)}")
    if decision.max_tokens_cap:
        print(f"=> max_tokens cap: {decision.max_tokens_cap}")
    out = args.max_tokens or decision.max_tokens_cap or 1000
    print(f"estimated cost per candidate ({args.prompt_tokens} prompt + {out} output tokens, upper bound):")
    for name in decision.chain:
        model = cfg.models.get(name)
        if model is None:
            print(f"  {name}: unknown model")
            continue
        for d in model.deployments:
            usd = nano_to_usd_str(cost_upper_bound_nano(args.prompt_tokens, out, d.rates))
            print(f"  {name} via {d.provider.name}/{d.upstream_model}: ${usd}")
    return 0


def cmd_policy_schema(args: argparse.Namespace) -> int:
    from gateway.policy.schema import schema_text

    text = schema_text()
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _admin(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = os.environ.get("GATEWAY_ADMIN_TOKEN", "")
    if not token:
        raise SystemExit("set GATEWAY_ADMIN_TOKEN to use the admin API")
    data = jsonutil.dumps(body) if body is not None else None
    req = urllib.request.Request(
        args.url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return jsonutil.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{exc.code}: {exc.read().decode(errors='replace')}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"cannot reach {args.url}: {exc.reason}") from None


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "create":
        created = _admin(args, "POST", "/admin/keys", {"team": args.team, "name": args.name or ""})
        print(jsonutil.dumps_pretty(created))
        print("store this key now: it is shown only once", file=sys.stderr)
    elif args.action == "list":
        for key in _admin(args, "GET", "/admin/keys")["data"]:
            print(f"{key['id']}\t{key['team']}\t{key.get('name', '')}\t{key.get('source', '')}")
    else:
        print(jsonutil.dumps_pretty(_admin(args, "DELETE", f"/admin/keys/{args.id}")))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from gateway.config.load import load_config
    from gateway.core import make_store
    from gateway.metering import report
    from gateway.store.memory import MemoryStore

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    by = [b for b in args.by.split(",") if b]
    try:  # a bad window or dimension is a usage error, found before the store is opened
        since, until = report.parse_since_until(args.since, args.until)
        report.aggregate([], by)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def load() -> list[dict[str, Any]]:
        store = make_store(cfg)
        if isinstance(store, MemoryStore):  # read the files only: a gateway may be running on them
            return await asyncio.to_thread(store.read_ledger_files, since, until)
        await store.start()
        try:
            teams = sorted(set(cfg.teams) | set(await store.teams()))
            records: list[dict[str, Any]] = []
            for team in teams:
                records += await store.ledger(team, since, until)
            return records
        finally:
            await store.close()

    records = asyncio.run(load())
    if args.format == "focus":
        text = report.render_focus_csv(records)
    else:
        rows = report.aggregate(records, by)
        text = {
            "table": lambda: report.render_table(rows, by),
            "csv": lambda: report.render_csv(rows, by),
            "json": lambda: report.render_json(rows, report.totals(records)),
        }[args.format]()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_prices_import(args: argparse.Namespace) -> int:
    from gateway.metering.litellm_import import convert_litellm_catalog, render_catalog_yaml

    data = jsonutil.loads(Path(args.file).read_bytes())
    only = set(args.only.split(",")) if args.only else None
    models, warnings = convert_litellm_catalog(
        data, as_of=date.fromisoformat(args.as_of), source=args.source, only=only
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = render_catalog_yaml(models)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {len(models)} models to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    _config_arg(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT); needs Redis")
    p.set_defaults(func=cmd_serve)

    sub.add_parser(
        "mock-upstream", help="run the mock provider (see --help after the command)", add_help=False
    )

    policy = sub.add_parser("policy", help="check, explain or export the policy schema").add_subparsers(
        dest="policy_command", required=True
    )
    p = policy.add_parser("check", help="validate gateway.yaml files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_policy_check)
    p = policy.add_parser("explain", help="show which rule fires and the chain it picks")
    _config_arg(p)
    p.add_argument("--team", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-tokens", type=int, default=0)
    p.add_argument("--prompt", help="prompt text (for auto routing's complexity score)")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--tag", action="append", default=[], help="k=v (repeatable)")
    p.add_argument("--budget-used", type=float, default=0.0)
    p.add_argument("--tools", action="store_true")
    p.add_argument("--images", action="store_true")
    p.add_argument("--stream", action="store_true")
    p.set_defaults(func=cmd_policy_explain)
    p = policy.add_parser("schema", help="print the JSON Schema of gateway.yaml")
    p.add_argument("--out")
    p.set_defaults(func=cmd_policy_schema)

    p = sub.add_parser("keys", help="manage virtual keys through the admin API")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("id", nargs="?", help="key id (revoke)")
    p.add_argument("--team")
    p.add_argument("--name")
    p.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"))
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("report", help="spend report from the ledger")
    _config_arg(p)
    p.add_argument("--since", required=True)
    p.add_argument("--until", required=True)
    p.add_argument("--by", default="team,model")
    p.add_argument("--format", choices=["table", "csv", "json", "focus"], default="table")
    p.set_defaults(func=cmd_report)

    prices = sub.add_parser("prices", help="price catalog tools").add_subparsers(
        dest="prices_command", required=True
    )
    p = prices.add_parser("import", help="convert LiteLLM's model_prices_and_context_window.json")
    p.add_argument("file")
    p.add_argument("--out")
    p.add_argument("--only", help="comma-separated model names to keep")
    p.add_argument("--as-of", default=date.today().isoformat())
    p.add_argument("--source", default="litellm model_prices_and_context_window.json")
    p.set_defaults(func=cmd_prices_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "mock-upstream":
        return cmd_mock(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        if args.action == "create" and not args.team:
            raise SystemExit("keys create needs --team")
        if args.action == "revoke" and not args.id:
            raise SystemExit("keys revoke needs a key id")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

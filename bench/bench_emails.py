"""Benchmark the store-email simulator: confirmations built, and sent over SMTP, per second, sustained.

    .venv/bin/python bench/bench_emails.py --count 3000

Sends unthrottled to the local stack's GreenMail (started if needed), into a mailbox of its own that is
removed afterwards. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from omnistream.settings import get_settings
from omnistream.stack.manager import Stack
from simulators.email_plan import EmailPlanner
from simulators.email_sender import EmailsConfig, send_emails
from simulators.emails import build_message, new_message_id
from simulators.reference import build_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="Emails to send.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--anomaly-share", type=float, default=0.05)
    args = parser.parse_args()

    settings = get_settings()
    Stack(settings).up(["greenmail"])
    build_reference(args.seed)  # generated once per process; not part of the figures

    started = time.perf_counter()
    size = 0
    for planned in EmailPlanner(args.seed, args.count, args.anomaly_share).emails():
        at = datetime.now(UTC).astimezone(ZoneInfo(planned.purchase.store.timezone)).replace(microsecond=0)
        msg = build_message(planned, at, at, "bench@example.invalid", "example.invalid", new_message_id("x"))
        size += len(msg.as_bytes())
    build_s = time.perf_counter() - started
    print(
        f"built (no network)  {build_s:8.2f} s  {args.count / build_s:10,.0f} emails/s  "
        f"(average {size / args.count:,.0f} bytes)"
    )

    mail = settings.mail.model_copy(
        update={"mailbox_user": f"bench-{os.getpid()}", "mailbox_password": SecretStr(f"bench-{os.getpid()}")}
    )
    api = f"http://{mail.host}:{mail.api_port}/api/user"
    password = mail.mailbox_password.get_secret_value()
    user = {"email": mail.mailbox_address, "login": mail.mailbox_user, "password": password}
    httpx.post(api, json=user).raise_for_status()
    try:
        config = EmailsConfig(seed=args.seed, rate=0, count=args.count, anomaly_share=args.anomaly_share)
        run = send_emails(mail, config)
        print(
            f"sent over SMTP      {run.seconds:8.2f} s  {args.count / run.seconds:10,.0f} emails/s  "
            f"({run.orders:,} orders, {args.count - run.orders:,} duplicates or malformed) "
            f"to {mail.host}:{mail.smtp_port}"
        )
    finally:
        httpx.delete(f"{api}/{mail.mailbox_user}")  # GreenMail deletes the user and its mail


if __name__ == "__main__":
    main()

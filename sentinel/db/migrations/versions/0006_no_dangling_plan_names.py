"""Users on a deleted plan: put them on the default plan.

Deleting a plan removed its row only, so its users kept its name in `users.plan_name`: the default
plan applied to them, the console showed them still assigned to the deleted plan, and a plan created
later under that name applied to them. Deleting a plan now clears its users' names in the same
transaction; this clears the names already left behind (NULL: the default plan).

No foreign key replaces that: adding one to `users` on SQLite means copying the table, and dropping
the old one under `PRAGMA foreign_keys=ON` (which cannot be turned off inside the migration's
transaction) would cascade to, and delete, every API key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text(
        "UPDATE users SET plan_name = NULL WHERE plan_name IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM plans WHERE plans.name = users.plan_name)"
    ))


def downgrade() -> None:
    """Nothing to undo: a name of no plan meant the default plan, as NULL does."""

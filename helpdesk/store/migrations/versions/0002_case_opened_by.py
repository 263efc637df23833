"""case.opened_by: who opened a case, for the new-cases-per-sender limit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('case', sa.Column('opened_by', sa.String(length=320), nullable=True))
    op.add_column('case', sa.Column('opened_by_domain', sa.String(length=255), nullable=True))
    # Round 1 kept no From apart from the requester: the requester is the best guess.
    op.execute('UPDATE "case" SET opened_by = requester, opened_by_domain = requester_domain')
    op.create_index('ix_case_opened_by', 'case', ['opened_by', 'created_at'], unique=False)
    op.create_index('ix_case_opened_by_domain', 'case', ['opened_by_domain', 'created_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_case_opened_by_domain', table_name='case')
    op.drop_index('ix_case_opened_by', table_name='case')
    with op.batch_alter_table('case') as batch:
        batch.drop_column('opened_by_domain')
        batch.drop_column('opened_by')

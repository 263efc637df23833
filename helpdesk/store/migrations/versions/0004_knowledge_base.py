"""knowledge base: the suggestions of a case, and its held staff notice

Revision ID: 0004
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import helpdesk.store.orm


revision = '0004'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('suggestion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=300), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_suggestion_case_id'), 'suggestion', ['case_id'], unique=False)
    op.create_index(op.f('ix_suggestion_slug'), 'suggestion', ['slug'], unique=False)
    with op.batch_alter_table('case') as batch:
        batch.add_column(sa.Column('notice_due_at', helpdesk.store.orm.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.create_index(batch.f('ix_case_notice_due_at'), ['notice_due_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('case') as batch:
        batch.drop_index(batch.f('ix_case_notice_due_at'))
        batch.drop_column('notice_due_at')
    op.drop_index(op.f('ix_suggestion_slug'), table_name='suggestion')
    op.drop_index(op.f('ix_suggestion_case_id'), table_name='suggestion')
    op.drop_table('suggestion')

"""web portal: sign-in tokens, sessions, and the indexes the case lists sort by

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa
import helpdesk.store.orm


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('case', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_case_updated_at'), ['updated_at'], unique=False)

    op.create_table('web_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('created_at', helpdesk.store.orm.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', helpdesk.store.orm.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', helpdesk.store.orm.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('web_token', schema=None) as batch_op:
        batch_op.create_index('ix_web_token_address_at', ['address', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_token_expires_at'), ['expires_at'], unique=False)

    op.create_table('web_session',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('created_at', helpdesk.store.orm.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', helpdesk.store.orm.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['case.id'], ),
    sa.PrimaryKeyConstraint('id_hash')
    )
    with op.batch_alter_table('web_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_session_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('web_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_session_expires_at'))
    op.drop_table('web_session')
    with op.batch_alter_table('web_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_token_expires_at'))
        batch_op.drop_index('ix_web_token_address_at')
    op.drop_table('web_token')
    with op.batch_alter_table('case', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_updated_at'))
        batch_op.drop_index(batch_op.f('ix_case_created_at'))

-- The agent: conversations (one project, one user), the tasks their messages start (each run
-- as a `codegen` job), the history the model sees, each task's transcript, and the events a
-- conversation streams. Times are microseconds since the Unix epoch, as for jobs.

CREATE TABLE conversations (
    id          UUID PRIMARY KEY,
    project_id  UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    -- Its user (the nil id for the local system principal).
    user_id     UUID NOT NULL,
    title       TEXT NOT NULL,
    -- The task in progress, if any: one at a time, so that the history stays in order.
    active_task UUID,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX conversations_project ON conversations (project_id, user_id, updated_at);

CREATE TABLE agent_tasks (
    id                UUID PRIMARY KEY,
    conversation_id   UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    job_id            UUID NOT NULL,
    created_by        UUID NOT NULL,
    -- 'chat' answers a message; 'replay' runs a finished task's recorded model answers again.
    mode              TEXT NOT NULL CHECK (mode IN ('chat', 'replay')),
    replay_of         UUID,
    prompt            TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    reason            TEXT,
    answer            TEXT,
    steps             BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    -- What a replay found different from the task it replayed (JSON), when it ends.
    report            TEXT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT
);
CREATE INDEX agent_tasks_conversation ON agent_tasks (conversation_id, created_at);
CREATE INDEX agent_tasks_job ON agent_tasks (job_id);

-- The conversation as the model sees it: user, assistant (with tool calls) and tool messages.
CREATE TABLE agent_messages (
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    task_id         UUID NOT NULL,
    message         TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);

-- Every model request and answer, tool call and result of a task, in order.
CREATE TABLE agent_transcript (
    task_id UUID NOT NULL REFERENCES agent_tasks (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);

-- What a conversation's clients are shown, resumable by number: text deltas, tool calls and
-- results, file changes, task status. Numbers only grow (with gaps).
CREATE TABLE agent_events (
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    task_id         UUID NOT NULL,
    kind            TEXT NOT NULL,
    data            TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);

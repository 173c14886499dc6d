-- firebox's cluster schema: the single host's registry (server/registry.py) in PostgreSQL's
-- words, plus what only a cluster has: its nodes and the places reserved on them.
-- depends:

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);

CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES keys(id),
    template TEXT NOT NULL,
    backend TEXT NOT NULL,
    metadata TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    end_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    ended_at DOUBLE PRECISION,
    end_reason TEXT,
    paused_at DOUBLE PRECISION,
    record TEXT,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sandboxes_owner_state ON sandboxes(owner, state);
CREATE INDEX sandboxes_node_state ON sandboxes(node, state);

CREATE TABLE templates (
    owner TEXT NOT NULL REFERENCES keys(id),
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    build_id TEXT NOT NULL,
    public INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    built_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, name, tag)
);
CREATE INDEX templates_build ON templates(build_id);

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES keys(id),
    name TEXT,
    sandbox_id TEXT NOT NULL,
    hidden INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    record TEXT NOT NULL,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX snapshots_owner ON snapshots(owner);
CREATE UNIQUE INDEX snapshots_name ON snapshots(owner, name) WHERE name IS NOT NULL;

-- every node of the cluster, found by gateways here (in Kubernetes as on this host): its
-- address, its lease (renewed every few seconds; past it the node is lost), what it has
-- free, and an operator's drain (kept across the node's restarts)
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    backend TEXT NOT NULL,
    state TEXT NOT NULL,            -- active | draining | lost
    drain TEXT,                     -- NULL | wait | pause: asked by `firebox node drain`
    slots INTEGER NOT NULL,         -- the most sandboxes placed on it at once
    capacity TEXT NOT NULL,         -- JSON: free memory, CPUs, load, warm templates
    started_at DOUBLE PRECISION NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL
);

-- a place taken on a node by a gateway for a create on its way there: counted with the
-- node's sandboxes, so two gateways placing at once never give one node more than it holds
CREATE TABLE placements (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX placements_node ON placements(node);

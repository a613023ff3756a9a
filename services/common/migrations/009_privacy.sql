-- Personal data (issue 7): subjects and their keys, and the record of erasures.
--
-- privacy_subject: one row per normalized customer identifier the platform has seen. Its random
-- pseudonym stands for the identifier everywhere else; its data key (DEK) is stored only wrapped
-- under a key derived from the master key (CRM_MASTER_KEY, never stored here); the identifier
-- itself only as a token under the DEK, and as a blind index (HMAC) to find the row again.
-- Erasure deletes rows: every token made with their keys is unreadable from then on.

CREATE TABLE privacy_subject (
    subject_id   text PRIMARY KEY CHECK (subject_id ~ '^psn-[0-9a-f]{32}$'),
    blind_index  bytea NOT NULL UNIQUE,
    kind         text NOT NULL,
    wrapped_key  bytea NOT NULL,     -- nonce | AES-GCM(KEK, DEK), subject id as associated data
    sealed_value text NOT NULL,      -- the normalized identifier, encrypted with the DEK
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per erasure carried out. It names the customer (a random id) and how many keys were
-- shredded; nothing in it identifies the person once the keys are gone. The stages skip events of
-- an erased customer that arrive later (in flight at erasure time, or read again by a rebuild).
CREATE TABLE privacy_erasure (
    customer_id    text PRIMARY KEY,
    event_key      text NOT NULL,            -- the customer.erasure_requested touchpoint
    requested_by   text,
    reason         text,
    subjects       int NOT NULL,             -- keys shredded
    requested_at   timestamptz NOT NULL,
    erased_at      timestamptz NOT NULL DEFAULT now()
);

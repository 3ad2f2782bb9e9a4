//! What each PKCS#11 function *is*, said once: its [`Descriptor`] (name, spec chapter,
//! operation step, whether it may be repeated after a lost answer, whether it changes the
//! token, whether its answer hands out objects...). Every rule that depends on what a function
//! does (the shim's retries and journal, the calls it answers ahead, the server's policy,
//! metrics and logs) asks the descriptor instead of keeping a list of its own.
//!
//! The descriptors and the [`crate::message::Request`] variants are written side by side, one
//! row per function, in `message/request.rs` ([`requests!`] builds both from that table), so
//! that adding a function is one row there, one shim shell and one dispatch arm.

/// The spec chapter a function belongs to (PKCS#11 v2.40 §5.4 to §5.15, v3.0 §5.6 to §5.16):
/// the shim's `api/` and the worker's `dispatch/` hold one file per chapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chapter {
    /// General purpose (v2.40 §5.4) and parallel function management (§5.16).
    General,
    /// Slot and token management (v2.40 §5.5).
    SlotToken,
    /// Session management (v2.40 §5.6, v3.0 §5.6: C_LoginUser, C_SessionCancel).
    Session,
    /// Object management (v2.40 §5.7).
    Object,
    /// Encryption, decryption, digests, signatures and MACs, verification, dual-function
    /// calls (v2.40 §5.8 to §5.13).
    Crypto,
    /// Key management and random numbers (v2.40 §5.14, §5.15).
    Key,
    /// Message-based encryption, decryption, signing and verification (v3.0 §5.10 to §5.16).
    Message,
}

/// The operation families a session can have initialised (PKCS#11 v2.40 §5.8 to §5.12,
/// v3.0 §5.10 to §5.16 for the message-based ones); one of each may be active at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    SignRecover,
    Verify,
    VerifyRecover,
    Find,
    MessageEncrypt,
    MessageDecrypt,
    MessageSign,
    MessageVerify,
    /// C_VerifySignatureInit's operation (v3.2): the signature is given at init.
    VerifySignature,
}

/// What a function does to the operations of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not an operation step.
    None,
    /// C_*Init: on success, a new operation that has taken no data.
    Init(OpKind),
    /// Feeds data (C_*Update, C_DigestKey, C_FindObjects, message parts): once answered, the
    /// operation can no longer be rebuilt by replaying its Init.
    Data(&'static [OpKind]),
    /// A single-part call with an output (C_Encrypt, C_Sign, ...): ends the operation unless
    /// it was a successful size query or answered CKR_BUFFER_TOO_SMALL (v2.40 §5.2). Its
    /// size query may be completed on the server (DESIGN.md, "Two-call functions").
    SinglePart(OpKind),
    /// C_*Final with an output: ends the operation by the same rule as a single-part call;
    /// never completed ahead (data may still follow a size query of an Update).
    Final(OpKind),
    /// Always ends the operation (C_Verify, C_VerifyFinal, C_FindObjectsFinal,
    /// C_Message*Final).
    Ends(OpKind),
    /// Leaves the session's operations in a state the shim cannot rebuild
    /// (C_SetOperationState, C_SessionCancel).
    Forget,
}

/// How long the server lets the vendor work on one call before it abandons it (DESIGN.md,
/// "Healing the HSM side"): a network HSM client that lost its HSM may block for minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// `--call-deadline` (10 s by default): every call but those below.
    Call,
    /// `--slow-call-deadline` (300 s by default): key generation, derivation and wrapping,
    /// token management (C_InitToken, C_InitPIN, C_SetPIN), and login, which on a
    /// PED-authenticated Thales Luna partition waits for a person to present a key.
    Slow,
    /// Never abandoned: the call waits as long as the application asked it to
    /// (C_WaitForSlotEvent without CKF_DONT_BLOCK).
    Unbounded,
}

/// The least role an operator's policy must give an identity for it to call a function
/// (DESIGN.md, "Identities, policy and audit"); without a policy, everyone calls everything.
/// Ordered: an enroller may do what a signer may, an admin everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// What a Fabric peer or orderer needs: sessions and user login, finding objects and
    /// reading their attributes, signing, verifying, digests, random numbers.
    Signer,
    /// What a Fabric CA or `fabric-ca-client enroll` needs besides: generating keys, creating,
    /// copying and destroying objects, setting their attributes.
    Enroller,
    /// Everything else: token management, PINs, encryption and decryption, wrapping,
    /// unwrapping, derivation, operation states. A new row is here until it says otherwise.
    Admin,
}

/// What one PKCS#11 function is, for every rule that depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Its name in the specification (`C_Sign`, `C_InitPIN`).
    pub name: &'static str,
    pub chapter: Chapter,
    pub step: Step,
    /// Asking again changes nothing the first ask could have changed: a request whose answer
    /// was lost with its connection may be sent again, even to the same server.
    pub repeatable: bool,
    /// It may change the token (objects, PINs, the token itself): a request whose answer was
    /// lost is never sent again, even to a new server instance, since the first one may have
    /// done its work before the server went away.
    pub changes_token: bool,
    /// Its answer may hand out object handles (`crate::objects::Handout`).
    pub hands_out: bool,
    /// It carries a PIN: its frame is wiped after use.
    pub carries_pin: bool,
    /// The shim records what its answer changes (a session opened or closed, a login, a PIN,
    /// an object's identity or existence), besides operation steps and handed-out objects.
    pub recorded: bool,
    /// It may change what C_GetAttributeValue answers for objects the application holds
    /// without changing the token: a login or logout (private objects are visible only while
    /// logged in, v2.40 §6.7), a session closed (its session objects with it), C_Finalize.
    pub changes_view: bool,
    /// How long the vendor may take before the server abandons the call.
    pub deadline: Deadline,
    /// The least role that may call it under an operator's policy.
    pub access: Access,
}

impl Descriptor {
    /// A function of `chapter` called `name`, with every flag off; the builder methods below
    /// turn them on, so that each row of the table reads as what is true of the function.
    pub const fn new(chapter: Chapter, name: &'static str) -> Self {
        Self {
            name,
            chapter,
            step: Step::None,
            repeatable: false,
            changes_token: false,
            hands_out: false,
            carries_pin: false,
            recorded: false,
            changes_view: false,
            deadline: Deadline::Call,
            access: Access::Admin,
        }
    }

    pub const fn step(self, step: Step) -> Self {
        Self { step, ..self }
    }

    pub const fn repeatable(self) -> Self {
        Self {
            repeatable: true,
            ..self
        }
    }

    pub const fn changes_token(self) -> Self {
        Self {
            changes_token: true,
            ..self
        }
    }

    pub const fn hands_out(self) -> Self {
        Self {
            hands_out: true,
            ..self
        }
    }

    pub const fn carries_pin(self) -> Self {
        Self {
            carries_pin: true,
            ..self
        }
    }

    pub const fn recorded(self) -> Self {
        Self {
            recorded: true,
            ..self
        }
    }

    pub const fn changes_view(self) -> Self {
        Self {
            changes_view: true,
            ..self
        }
    }

    pub const fn deadline(self, deadline: Deadline) -> Self {
        Self { deadline, ..self }
    }

    pub const fn access(self, access: Access) -> Self {
        Self { access, ..self }
    }
}

/// Builds, from one table of rows `Variant { fields } => descriptor`, the
/// [`crate::message::Request`] enum, the [`crate::message::Function`] enum (one fieldless
/// variant per row, with its descriptor), and the accessors for the arguments that rules look
/// at by name: `session` (the session handle), `slot`, `capacity` (the output buffer of a two-call
/// function), `mechanism`, `data` and `signature`. An accessor finds its field by its name,
/// so a new row with a `session` field is reached by every rule about sessions at once.
macro_rules! requests {
    ($(
        $(#[$attr:meta])*
        $variant:ident { $($(#[$fattr:meta])* $field:ident : $ty:ty),* $(,)? } => $descriptor:expr
    ),* $(,)?) => {
        /// A request, one variant per PKCS#11 function that crosses the wire.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Request {
            $($(#[$attr])* $variant { $($(#[$fattr])* $field: $ty),* },)*
        }

        /// The function a request stands for: a name for its [`Descriptor`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Function {
            $($variant,)*
        }

        impl Function {
            /// Every function, in the order of the table.
            pub const ALL: &'static [Function] = &[$(Function::$variant,)*];

            /// What the function is.
            pub const fn descriptor(self) -> &'static Descriptor {
                match self {
                    $(Function::$variant => {
                        const D: Descriptor = $descriptor;
                        &D
                    })*
                }
            }
        }

        impl Request {
            /// Its arguments for a call trace (`session=3, mechanism=CKM_ECDSA, key=7`), each
            /// as [`crate::trace::Traced`] shows it: never a PIN's, key's or data's bytes.
            pub fn trace_arguments(&self) -> String {
                let mut out = String::new();
                match self {
                    $(Request::$variant { $($field),* } => {
                        $($crate::trace::argument(&mut out, stringify!($field), $field);)*
                    })*
                }
                out
            }

            /// The function this request stands for.
            pub fn function(&self) -> Function {
                match self {
                    $(Request::$variant { .. } => Function::$variant,)*
                }
            }

            /// The session handle this request names, if any.
            pub fn session(&self) -> Option<u64> {
                fn find(request: &Request) -> Option<&u64> {
                    $($crate::function::field!(session, request, $variant; $($field)*);)*
                    None
                }
                find(self).copied()
            }

            /// The slot this request names, if it has a `slot` argument.
            pub fn slot(&self) -> Option<u64> {
                fn find(request: &Request) -> Option<&u64> {
                    $($crate::function::field!(slot, request, $variant; $($field)*);)*
                    None
                }
                find(self).copied()
            }

            /// [`Request::session`], to change.
            pub fn session_mut(&mut self) -> Option<&mut u64> {
                $($crate::function::field!(session, self, $variant; $($field)*);)*
                None
            }

            /// The output buffer of a two-call function (v2.40 §5.2), if it has one.
            pub fn capacity(&self) -> Option<&Out> {
                $($crate::function::field!(capacity, self, $variant; $($field)*);)*
                None
            }

            /// [`Request::capacity`], to change.
            pub fn capacity_mut(&mut self) -> Option<&mut Out> {
                $($crate::function::field!(capacity, self, $variant; $($field)*);)*
                None
            }

            /// The mechanism a request initialises an operation or makes a key with.
            pub fn mechanism(&self) -> Option<&Mechanism> {
                $($crate::function::field!(mechanism, self, $variant; $($field)*);)*
                None
            }

            /// The data a request feeds its operation, if it has a `data` argument.
            pub fn data(&self) -> Option<&Bytes> {
                $($crate::function::field!(data, self, $variant; $($field)*);)*
                None
            }

            /// The signature a request gives, if it has a `signature` argument.
            pub fn signature(&self) -> Option<&Bytes> {
                $($crate::function::field!(signature, self, $variant; $($field)*);)*
                None
            }
        }
    };
}
pub(crate) use requests;

/// One accessor's arm for one row: `field!(NAME, SELF, Variant; its field names)` returns
/// `Some(&field)` from the enclosing function when `SELF` is that variant and it has a field
/// called NAME; it expands to nothing otherwise. (The field is matched and named by this
/// macro's own rules, so that the pattern and its use share one hygiene context.)
macro_rules! field {
    (session, $s:expr, $v:ident; session $($rest:ident)*) => {
        if let Request::$v { session, .. } = $s {
            return Some(session);
        }
    };
    (slot, $s:expr, $v:ident; slot $($rest:ident)*) => {
        if let Request::$v { slot, .. } = $s {
            return Some(slot);
        }
    };
    (capacity, $s:expr, $v:ident; capacity $($rest:ident)*) => {
        if let Request::$v { capacity, .. } = $s {
            return Some(capacity);
        }
    };
    (mechanism, $s:expr, $v:ident; mechanism $($rest:ident)*) => {
        if let Request::$v { mechanism, .. } = $s {
            return Some(mechanism);
        }
    };
    (data, $s:expr, $v:ident; data $($rest:ident)*) => {
        if let Request::$v { data, .. } = $s {
            return Some(data);
        }
    };
    (signature, $s:expr, $v:ident; signature $($rest:ident)*) => {
        if let Request::$v { signature, .. } = $s {
            return Some(signature);
        }
    };
    ($name:ident, $s:expr, $v:ident; $other:ident $($rest:ident)*) => {
        $crate::function::field!($name, $s, $v; $($rest)*)
    };
    ($name:ident, $s:expr, $v:ident;) => {};
}
pub(crate) use field;

//! The collections API of the controller (keep-protocol.md §7): an in-memory store of
//! collection records with the API server's rules for saving them, and the list
//! machinery (filters, order, select, paging). No I/O: `controller.rs` parses HTTP
//! and calls in.
//!
//! What is mirrored, and from where (public Arvados source):
//! - saving (services/api/app/models/collection.rb): manifest syntax check, `+A`
//!   signature check for non-admin callers (403 on a bad or missing one when
//!   `BlobSigning` is on), stripping of `+A` hints, the portable data hash of the
//!   manifest with every hint stripped, file statistics, default
//!   `storage_classes_desired`, name uniqueness per owner (with
//!   `ensure_unique_name`), and versioning (`manage_versioning`: the previous state
//!   saved as a past version with its own UUID; `syncable_attrs` copied to every past
//!   version);
//! - trash (services/api/lib/trashable.rb): `trash_at` never in the past,
//!   `is_trashed` ⇔ `trash_at <= now`, `delete_at` defaulting to `trash_at +
//!   DefaultTrashLifetime`; trash/untrash/delete as `TrashableController`;
//! - reading (collections_controller.rb, lib/controller/localdb/collection.go,
//!   lib/controller/router/response.go): old versions readable by UUID, trashed ones
//!   only with `include_trash`; lists without `manifest_text` unless selected;
//!   manifests signed afresh for the caller's token, expiring at `min(now + TTL,
//!   trash_at)`, unless trashed; timestamps as `rfc3339NanoFixed`;
//! - list parameters (services/api/lib/load_param.rb, record_filters.rb).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::manifest;
use crate::rfc3339::{format_ns, parse_ns};
use crate::signature::Signer;

/// A failed request: the HTTP status and the message for §7.6's `errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

fn api_err(status: u16, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// Rails answers 422 to an `ArgumentError` or a failed validation.
fn invalid(message: impl Into<String>) -> ApiError {
    api_err(422, message)
}

/// Rails `render_not_found`.
fn not_found() -> ApiError {
    api_err(404, "Path not found")
}

/// `ArvadosModel::PermissionDeniedError` (403).
fn denied() -> ApiError {
    api_err(
        403,
        "#<ArvadosModel::PermissionDeniedError: ArvadosModel::PermissionDeniedError>",
    )
}

/// Who is calling, from the request's token.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The token as sent: signatures are made and checked for it (§3.1).
    pub(crate) token: String,
    pub(crate) user_uuid: String,
    pub(crate) is_admin: bool,
}

/// The cluster settings the collections API follows.
#[derive(Clone)]
pub(crate) struct Policy {
    pub(crate) cluster_id: String,
    /// `Collections.BlobSigning`.
    pub(crate) blob_signing: bool,
    /// `BlobSigningKey` and `BlobSigningTTL`.
    pub(crate) signer: Signer,
    /// Names of the storage classes with `Default: true`.
    pub(crate) default_storage_classes: Vec<String>,
    /// `Collections.DefaultTrashLifetime`.
    pub(crate) default_trash_lifetime_ns: i64,
    /// `Collections.CollectionVersioning`.
    pub(crate) collection_versioning: bool,
    /// `Collections.PreserveVersionIfIdle`: 0 = a version on every versionable
    /// update, < 0 never (unless asked), > 0 when idle that long.
    pub(crate) preserve_version_if_idle_ns: i64,
    /// `API.MaxItemsPerResponse`.
    pub(crate) max_items_per_response: usize,
}

/// One row of the collections table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    /// The database id (creation order); `order=["id"]` sorts by it.
    pub(crate) id: u64,
    /// Physical row order: renewed on every write, as a Postgres UPDATE writes a new
    /// tuple. A list whose `order` is emptied (see [`ListParams`]) comes in this order.
    pub(crate) seq: u64,
    pub(crate) uuid: String,
    pub(crate) owner_uuid: String,
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) properties: Map<String, Value>,
    /// Without `+A` hints.
    pub(crate) manifest_text: String,
    pub(crate) portable_data_hash: String,
    pub(crate) replication_desired: Option<i64>,
    pub(crate) replication_confirmed: Option<i64>,
    pub(crate) replication_confirmed_at: Option<i64>,
    pub(crate) storage_classes_desired: Vec<String>,
    pub(crate) storage_classes_confirmed: Vec<String>,
    pub(crate) storage_classes_confirmed_at: Option<i64>,
    pub(crate) trash_at: Option<i64>,
    pub(crate) delete_at: Option<i64>,
    pub(crate) current_version_uuid: String,
    pub(crate) version: i64,
    pub(crate) preserve_version: bool,
    pub(crate) created_at: i64,
    pub(crate) modified_at: i64,
    pub(crate) modified_by_user_uuid: String,
    pub(crate) file_count: u64,
    pub(crate) file_size_total: u64,
}

impl Record {
    /// Trashed at `now`: the API server's visibility test (`trash_at <= now`,
    /// arvados_model.rb `readable_by`), not a stored flag.
    fn is_trashed(&self, now: i64) -> bool {
        self.trash_at.is_some_and(|t| t <= now)
    }
    fn is_current(&self) -> bool {
        self.uuid == self.current_version_uuid
    }
}

/// Attributes a client may `select` (the `api_accessible :user` template).
const SELECTABLE: &[&str] = &[
    "uuid",
    "etag",
    "kind",
    "owner_uuid",
    "created_at",
    "modified_by_user_uuid",
    "modified_at",
    "name",
    "description",
    "properties",
    "portable_data_hash",
    "unsigned_manifest_text",
    "manifest_text",
    "replication_desired",
    "replication_confirmed",
    "replication_confirmed_at",
    "storage_classes_desired",
    "storage_classes_confirmed",
    "storage_classes_confirmed_at",
    "delete_at",
    "trash_at",
    "is_trashed",
    "version",
    "current_version_uuid",
    "preserve_version",
    "file_count",
    "file_size_total",
];

/// Column types, for filters and ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColType {
    Text,
    Time,
    Int,
    Bool,
}

fn column_type(attr: &str) -> Option<ColType> {
    Some(match attr {
        "uuid"
        | "owner_uuid"
        | "name"
        | "description"
        | "portable_data_hash"
        | "current_version_uuid"
        | "modified_by_user_uuid"
        | "manifest_text" => ColType::Text,
        "created_at"
        | "modified_at"
        | "trash_at"
        | "delete_at"
        | "replication_confirmed_at"
        | "storage_classes_confirmed_at" => ColType::Time,
        "id"
        | "replication_desired"
        | "replication_confirmed"
        | "version"
        | "file_count"
        | "file_size_total" => ColType::Int,
        "is_trashed" | "preserve_version" => ColType::Bool,
        _ => return None,
    })
}

/// A column's value, compared as Postgres compares them.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Time(i64),
    Int(i64),
    Bool(bool),
}

impl Cell {
    /// SQL comparison; `None` when either side is NULL.
    fn sql_cmp(&self, other: &Cell) -> Option<Ordering> {
        match (self, other) {
            (Cell::Text(a), Cell::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Cell::Time(a), Cell::Time(b)) | (Cell::Int(a), Cell::Int(b)) => Some(a.cmp(b)),
            (Cell::Bool(a), Cell::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
    /// ORDER BY: NULL sorts as larger than any value (Postgres default).
    fn order_cmp(&self, other: &Cell) -> Ordering {
        match (self, other) {
            (Cell::Null, Cell::Null) => Ordering::Equal,
            (Cell::Null, _) => Ordering::Greater,
            (_, Cell::Null) => Ordering::Less,
            _ => self.sql_cmp(other).unwrap_or(Ordering::Equal),
        }
    }
}

fn cell(r: &Record, attr: &str, now: i64) -> Cell {
    let text = |s: &str| Cell::Text(s.to_owned());
    let opt_text = |s: &Option<String>| s.as_deref().map_or(Cell::Null, text);
    let time = |t: Option<i64>| t.map_or(Cell::Null, Cell::Time);
    let int = |v: Option<i64>| v.map_or(Cell::Null, Cell::Int);
    match attr {
        "id" => Cell::Int(r.id as i64),
        "uuid" => text(&r.uuid),
        "owner_uuid" => text(&r.owner_uuid),
        "name" => opt_text(&r.name),
        "description" => opt_text(&r.description),
        "portable_data_hash" => text(&r.portable_data_hash),
        "current_version_uuid" => text(&r.current_version_uuid),
        "modified_by_user_uuid" => text(&r.modified_by_user_uuid),
        "manifest_text" => text(&r.manifest_text),
        "created_at" => Cell::Time(r.created_at),
        "modified_at" => Cell::Time(r.modified_at),
        "trash_at" => time(r.trash_at),
        "delete_at" => time(r.delete_at),
        "replication_confirmed_at" => time(r.replication_confirmed_at),
        "storage_classes_confirmed_at" => time(r.storage_classes_confirmed_at),
        "replication_desired" => int(r.replication_desired),
        "replication_confirmed" => int(r.replication_confirmed),
        "version" => Cell::Int(r.version),
        "file_count" => Cell::Int(r.file_count as i64),
        "file_size_total" => Cell::Int(r.file_size_total as i64),
        "is_trashed" => Cell::Bool(r.is_trashed(now)),
        "preserve_version" => Cell::Bool(r.preserve_version),
        _ => Cell::Null,
    }
}

// ---------------------------------------------------------------------------
// List parameters (load_param.rb, record_filters.rb)
// ---------------------------------------------------------------------------

/// A filter operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
    IsA,
}

/// One parsed `[attr, op, operand]` filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Filter {
    attr: String,
    op: Op,
    /// Already coerced to the column's type; `In`/`NotIn` hold several; `IsA` holds
    /// UUID infixes (`None`: a kind with no UUIDs here).
    operands: Vec<Cell>,
    is_a: Vec<Option<&'static str>>,
    /// The operand was a JSON string: `!=` then also matches NULL.
    string_operand: bool,
}

/// A parsed list request.
#[derive(Debug, Clone)]
pub(crate) struct ListParams {
    pub(crate) filters: Vec<Filter>,
    /// `(column, descending)`. After `optimize_orders` (defaults `modified_at desc,
    /// uuid desc` appended, nothing after a unique column) and, when `select` is
    /// given, without the columns not selected (load_param.rb `load_select_param`:
    /// such a list comes in physical row order).
    pub(crate) orders: Vec<(String, bool)>,
    pub(crate) limit: usize,
    pub(crate) offset: usize,
    pub(crate) select: Option<Vec<String>>,
    pub(crate) include_trash: bool,
    pub(crate) include_old_versions: bool,
    /// `count=none`: no `items_available`.
    pub(crate) count_none: bool,
}

/// A JSON value that may arrive as JSON text in a query string.
fn json_param(v: &Value) -> Result<Value, ()> {
    match v {
        Value::String(s) => serde_json::from_str(s).map_err(|_| ()),
        other => Ok(other.clone()),
    }
}

/// A boolean parameter (`true`, `1`, `t`, `yes`, `y` in a query string).
pub(crate) fn bool_param(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "1" | "t" | "yes" | "y"
        ),
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

fn uint_param(v: Option<&Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| invalid(format!("Invalid value for {name} parameter"))),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("Invalid value for {name} parameter"))),
        Some(_) => Err(invalid(format!("Invalid value for {name} parameter"))),
    }
}

/// `select`: a JSON array of attribute names; unknown ones are an error.
pub(crate) fn parse_select(v: Option<&Value>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let bad = || invalid("Could not parse \"select\" param as an array");
    let v = json_param(v).map_err(|_| bad())?;
    let arr = match v {
        Value::Null | Value::Bool(false) => return Ok(None),
        Value::Array(a) => a,
        _ => return Err(bad()),
    };
    let mut out = Vec::new();
    for a in arr {
        let Value::String(s) = a else {
            return Err(bad());
        };
        if s == "modified_by_client_uuid" {
            continue; // load_param.rb: ignored for workbench2's sake.
        }
        let s = s.strip_prefix("collections.").unwrap_or(&s).to_owned();
        if !SELECTABLE.contains(&s.as_str()) {
            return Err(invalid(format!(
                "Invalid attribute '{s}' of Collection in select parameter"
            )));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    // An empty select is no select (lib/controller: `len(opts.Select) > 0`).
    Ok((!out.is_empty()).then_some(out))
}

/// `order`: a JSON array of `"attr [asc|desc]"`, or a comma-separated string. Unknown
/// columns and directions are silently dropped, as Rails does.
pub(crate) fn parse_order(v: Option<&Value>) -> Result<Vec<(String, bool)>, ApiError> {
    let items: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.trim_start().starts_with('[') => {
            match serde_json::from_str::<Value>(s) {
                Ok(Value::Array(a)) => a.iter().map(value_to_s).collect(),
                _ => return Err(invalid("Could not parse \"order\" param as an array")),
            }
        }
        Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().map(value_to_s).collect(),
        Some(_) => Vec::new(),
    };
    let mut out = Vec::new();
    for item in items {
        let mut words = item.split_whitespace();
        let Some(attr) = words.next() else { continue };
        let dir = words.next().unwrap_or("asc").to_ascii_lowercase();
        let attr = attr.strip_prefix("collections.").unwrap_or(attr);
        if column_type(attr).is_some() && (dir == "asc" || dir == "desc") {
            out.push((attr.to_owned(), dir == "desc"));
        }
    }
    Ok(out)
}

fn value_to_s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// load_param.rb `optimize_orders`: the defaults appended, each column once, nothing
/// after a unique column.
fn optimize_orders(given: Vec<(String, bool)>) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    let defaults = [("modified_at".to_owned(), true), ("uuid".to_owned(), true)];
    for (col, desc) in given.into_iter().chain(defaults) {
        if out.iter().any(|(c, _)| *c == col) {
            continue;
        }
        let unique = col == "uuid" || col == "id";
        out.push((col, desc));
        if unique {
            break;
        }
    }
    out
}

/// Maps a kind to its UUID type infix (`is_a`).
fn kind_infix(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "arvados#collection" => "4zz18",
        "arvados#user" => "tpzed",
        "arvados#group" => "j7d0g",
        "arvados#keepService" => "bi6l4",
        "arvados#link" => "o0j2j",
        "arvados#apiClientAuthorization" => "gj3su",
        "arvados#container" => "dz642",
        "arvados#containerRequest" => "xvhdp",
        "arvados#workflow" => "7fd4e",
        "arvados#virtualMachine" => "2x53u",
        "arvados#authorizedKey" => "fngyi",
        _ => return None,
    })
}

/// Coerces a scalar operand to the column's type (record_filters.rb).
fn coerce(attr: &str, ty: ColType, op: Op, v: &Value) -> Result<Cell, ApiError> {
    let bad_type = || {
        invalid(format!(
            "Invalid operand type '{}' for '{}' operator in filters",
            class_name(v),
            op_name(op)
        ))
    };
    match (ty, v) {
        (_, Value::Null) => Ok(Cell::Null),
        (ColType::Text, Value::String(s)) => Ok(Cell::Text(s.clone())),
        (ColType::Time, Value::String(s)) => parse_ns(s)
            .map(Cell::Time)
            .ok_or_else(|| invalid(format!("Invalid time '{s}' for attribute '{attr}'"))),
        (ColType::Bool, Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "y" | "yes" => Ok(Cell::Bool(true)),
            "0" | "f" | "false" | "n" | "no" => Ok(Cell::Bool(false)),
            _ => Err(invalid(format!(
                "Invalid operand '{s}' for boolean attribute '{attr}'"
            ))),
        },
        (ColType::Bool, Value::Bool(b)) => Ok(Cell::Bool(*b)),
        (ColType::Int, Value::Number(n)) => n.as_i64().map(Cell::Int).ok_or_else(|| {
            invalid(format!(
                "Invalid operand '{n}' for integer attribute '{attr}'"
            ))
        }),
        (ColType::Int, Value::String(s)) => s.trim().parse().map(Cell::Int).map_err(|_| {
            invalid(format!(
                "Invalid operand '{s}' for integer attribute '{attr}'"
            ))
        }),
        _ => Err(bad_type()),
    }
}

/// The Ruby class name of a JSON value, for error messages.
fn class_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NilClass",
        Value::Bool(true) => "TrueClass",
        Value::Bool(false) => "FalseClass",
        Value::Number(n) if n.is_i64() || n.is_u64() => "Integer",
        Value::Number(_) => "Float",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Hash",
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Like => "like",
        Op::ILike => "ilike",
        Op::In => "in",
        Op::NotIn => "not in",
        Op::IsA => "is_a",
    }
}

/// `filters`: a JSON array of `[attr, operator, operand]`.
pub(crate) fn parse_filters(v: Option<&Value>) -> Result<Vec<Filter>, ApiError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let v = json_param(v).map_err(|_| invalid("Could not parse \"filters\" param as an array"))?;
    let arr = match v {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err(invalid("Could not parse \"filters\" param as an array")),
    };
    arr.iter().map(parse_filter).collect()
}

fn parse_filter(f: &Value) -> Result<Filter, ApiError> {
    let arr = f
        .as_array()
        .filter(|a| a.len() == 2 || a.len() == 3)
        .ok_or_else(|| {
            invalid(format!(
                "Invalid element in filters array: {f} is not an array"
            ))
        })?;
    let (attr, op) = (&arr[0], &arr[1]);
    let operand = arr.get(2).unwrap_or(&Value::Null);
    let Value::String(op_s) = op else {
        return Err(invalid(format!("Invalid operator '{op}' in filter")));
    };
    let op = match op_s.to_ascii_lowercase().as_str() {
        "=" => Op::Eq,
        "!=" | "<>" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "like" => Op::Like,
        "ilike" => Op::ILike,
        "in" => Op::In,
        "not in" => Op::NotIn,
        "is_a" => Op::IsA,
        other => return Err(invalid(format!("Invalid operator '{other}'"))),
    };
    let Value::String(attr) = attr else {
        return Err(invalid(format!("Invalid attribute '{attr}' in filter")));
    };
    let attr = attr.strip_prefix("collections.").unwrap_or(attr).to_owned();
    // searchable_columns: text operators only on text columns; manifest_text never.
    let ty = column_type(&attr)
        .filter(|_| attr != "manifest_text" && attr != "id")
        .filter(|t| *t == ColType::Text || !matches!(op, Op::Like | Op::ILike | Op::IsA))
        .ok_or_else(|| invalid(format!("Invalid attribute '{attr}' in filter")))?;
    let mut filter = Filter {
        attr: attr.clone(),
        op,
        operands: Vec::new(),
        is_a: Vec::new(),
        string_operand: operand.is_string(),
    };
    match op {
        Op::In | Op::NotIn => {
            let Value::Array(items) = operand else {
                return Err(invalid(format!(
                    "Invalid operand type for '{}' operator in filters",
                    op_name(op)
                )));
            };
            for it in items {
                if ty == ColType::Int && !(it.is_i64()) {
                    return Err(invalid(format!(
                        "Invalid element '{it}' in array for integer attribute '{attr}'"
                    )));
                }
                filter.operands.push(coerce(&attr, ty, op, it)?);
            }
        }
        Op::IsA => {
            let kinds: Vec<&Value> = match operand {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for k in kinds {
                let k = k.as_str().unwrap_or("");
                filter.is_a.push(kind_infix(k));
            }
        }
        Op::Like | Op::ILike => {
            if !operand.is_string() {
                return Err(invalid(format!(
                    "Invalid operand type '{}' for '{}' operator in filters",
                    class_name(operand),
                    op_name(op)
                )));
            }
            filter.operands.push(coerce(&attr, ty, op, operand)?);
        }
        _ => {
            if ty == ColType::Bool && !matches!(op, Op::Eq | Op::Ne) {
                return Err(invalid(format!(
                    "Invalid operator '{}' for boolean attribute '{attr}'",
                    op_name(op)
                )));
            }
            if operand.is_null() && !matches!(op, Op::Eq | Op::Ne) {
                return Err(invalid(format!(
                    "Invalid operand type 'NilClass' for '{}' operator in filters",
                    op_name(op)
                )));
            }
            filter.operands.push(coerce(&attr, ty, op, operand)?);
        }
    }
    Ok(filter)
}

/// SQL `LIKE`: `%` any run, `_` one character, `\` escapes.
fn like(text: &str, pattern: &str, fold: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if fold {
        (
            text.to_lowercase().chars().collect(),
            pattern.to_lowercase().chars().collect(),
        )
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    fn m(t: &[char], p: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('%') => (0..=t.len()).any(|i| m(&t[i..], &p[1..])),
            Some('_') => !t.is_empty() && m(&t[1..], &p[1..]),
            Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && m(&t[1..], &p[2..]),
            Some(c) => t.first() == Some(c) && m(&t[1..], &p[1..]),
        }
    }
    m(&t, &p)
}

impl Filter {
    fn matches(&self, r: &Record, now: i64) -> bool {
        let v = cell(r, &self.attr, now);
        let cmp = |o: &Cell| v.sql_cmp(o);
        match self.op {
            Op::Eq if self.operands[0] == Cell::Null => v == Cell::Null,
            Op::Ne if self.operands[0] == Cell::Null => v != Cell::Null,
            Op::Eq => cmp(&self.operands[0]) == Some(Ordering::Equal),
            // record_filters.rb: `attr <> ? OR attr IS NULL` for a string operand.
            Op::Ne => match cmp(&self.operands[0]) {
                Some(o) => o != Ordering::Equal,
                None => v == Cell::Null && self.string_operand,
            },
            Op::Lt => cmp(&self.operands[0]) == Some(Ordering::Less),
            Op::Le => matches!(
                cmp(&self.operands[0]),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::Gt => cmp(&self.operands[0]) == Some(Ordering::Greater),
            Op::Ge => matches!(
                cmp(&self.operands[0]),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::Like | Op::ILike => match (&v, &self.operands[0]) {
                (Cell::Text(t), Cell::Text(p)) => like(t, p, self.op == Op::ILike),
                _ => false,
            },
            Op::In => self
                .operands
                .iter()
                .any(|o| cmp(o) == Some(Ordering::Equal)),
            Op::NotIn => {
                let has_null = self.operands.contains(&Cell::Null);
                if v == Cell::Null {
                    // `(attr NOT IN (...) OR attr IS NULL)` unless the list has a NULL.
                    !has_null
                } else {
                    !has_null
                        && !self
                            .operands
                            .iter()
                            .any(|o| cmp(o) == Some(Ordering::Equal))
                }
            }
            Op::IsA => self.is_a.iter().any(|infix| match (infix, &v) {
                (Some(i), _) if self.attr == "uuid" => *i == "4zz18",
                (Some(i), Cell::Text(s)) => s.len() == 27 && s.get(6..11) == Some(*i),
                _ => false,
            }),
        }
    }
}

/// Parses every list parameter from `get(name)`.
pub(crate) fn parse_list_params(
    get: impl Fn(&str) -> Option<Value>,
    max_items: usize,
) -> Result<ListParams, ApiError> {
    let limit = uint_param(get("limit").as_ref(), "limit")?.map_or(100, |l| l.min(max_items));
    let offset = uint_param(get("offset").as_ref(), "offset")?.unwrap_or(0);
    let mut orders = optimize_orders(parse_order(get("order").as_ref())?);
    let select = parse_select(get("select").as_ref())?;
    if let Some(sel) = &select {
        // lib/controller/localdb/collection.go adds these two before Rails sees the
        // select; Rails then drops orders on unselected columns.
        orders.retain(|(c, _)| sel.iter().any(|s| s == c) || c == "is_trashed" || c == "trash_at");
    }
    let count = get("count").map(|v| value_to_s(&v));
    Ok(ListParams {
        filters: parse_filters(get("filters").as_ref())?,
        orders,
        limit,
        offset,
        select,
        include_trash: bool_param(get("include_trash").as_ref()),
        include_old_versions: bool_param(get("include_old_versions").as_ref()),
        count_none: count.as_deref() == Some("none"),
    })
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// The collections of one cluster.
pub(crate) struct Store {
    policy: Policy,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, Record>,
    next_id: u64,
    next_seq: u64,
    /// The last write time handed out: write times increase strictly, so that
    /// ordering by `modified_at` is stable.
    last_ns: i64,
}

fn wall_ns() -> i64 {
    // Postgres keeps microseconds.
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    ns - ns % 1000
}

impl Inner {
    /// "Now" for reads: never before the last write.
    fn now(&self) -> i64 {
        wall_ns().max(self.last_ns)
    }
    /// A fresh write time, later than every earlier one.
    fn tick(&mut self) -> i64 {
        let t = wall_ns().max(self.last_ns + 1000);
        self.last_ns = t;
        t
    }
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
    /// The trash sweep: rows whose `delete_at` has passed are gone.
    fn sweep(&mut self, now: i64) {
        self.records
            .retain(|_, r| r.delete_at.is_none_or(|d| d > now));
    }
}

/// The attributes a create or update may carry, parsed.
#[derive(Default)]
struct Patch {
    uuid: Option<String>,
    owner_uuid: Option<String>,
    name: Option<Option<String>>,
    description: Option<Option<String>>,
    properties: Option<Map<String, Value>>,
    manifest_text: Option<String>,
    portable_data_hash: Option<Option<String>>,
    replication_desired: Option<Option<i64>>,
    replication_confirmed: Option<Option<i64>>,
    replication_confirmed_at: Option<Option<i64>>,
    storage_classes_desired: Option<Vec<String>>,
    storage_classes_confirmed: Option<Vec<String>>,
    storage_classes_confirmed_at: Option<Option<i64>>,
    trash_at: Option<Option<i64>>,
    delete_at: Option<Option<i64>>,
    is_trashed: Option<bool>,
    preserve_version: Option<bool>,
}

fn opt_string(k: &str, v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(invalid(format!("{k} must be a string"))),
    }
}

fn opt_int(k: &str, v: &Value) -> Result<Option<i64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(format!("{k} must be an integer"))),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("{k} must be an integer"))),
        _ => Err(invalid(format!("{k} must be an integer"))),
    }
}

fn opt_time(k: &str, v: &Value) -> Result<Option<i64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => {
            // Postgres keeps microseconds.
            parse_ns(s)
                .map(|t| Some(t - t.rem_euclid(1000)))
                .ok_or_else(|| invalid(format!("{k} is not a valid time: {s:?}")))
        }
        _ => Err(invalid(format!("{k} must be a time string"))),
    }
}

fn string_array(k: &str, v: &Value) -> Result<Vec<String>, ApiError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|e| {
                e.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("{k} must be an array of strings")))
            })
            .collect(),
        _ => Err(invalid(format!("{k} must be an array of strings"))),
    }
}

fn as_bool(v: &Value) -> bool {
    bool_param(Some(v))
}

impl Patch {
    fn parse(attrs: &Map<String, Value>) -> Result<Patch, ApiError> {
        let mut p = Patch::default();
        for (k, v) in attrs {
            match k.as_str() {
                "uuid" => p.uuid = opt_string(k, v)?,
                "owner_uuid" => p.owner_uuid = opt_string(k, v)?,
                "name" => p.name = Some(opt_string(k, v)?),
                "description" => p.description = Some(opt_string(k, v)?),
                "properties" => {
                    p.properties = Some(match v {
                        Value::Null => Map::new(),
                        Value::Object(m) => m.clone(),
                        _ => return Err(invalid("Properties must be a hash")),
                    })
                }
                "manifest_text" => p.manifest_text = Some(opt_string(k, v)?.unwrap_or_default()),
                "portable_data_hash" => p.portable_data_hash = Some(opt_string(k, v)?),
                "replication_desired" => p.replication_desired = Some(opt_int(k, v)?),
                "replication_confirmed" => p.replication_confirmed = Some(opt_int(k, v)?),
                "replication_confirmed_at" => p.replication_confirmed_at = Some(opt_time(k, v)?),
                "storage_classes_desired" => p.storage_classes_desired = Some(string_array(k, v)?),
                "storage_classes_confirmed" => {
                    p.storage_classes_confirmed = Some(string_array(k, v)?)
                }
                "storage_classes_confirmed_at" => {
                    p.storage_classes_confirmed_at = Some(opt_time(k, v)?)
                }
                "trash_at" => p.trash_at = Some(opt_time(k, v)?),
                "delete_at" => p.delete_at = Some(opt_time(k, v)?),
                "is_trashed" => p.is_trashed = Some(as_bool(v)),
                "preserve_version" => p.preserve_version = Some(as_bool(v)),
                // Read-only or computed: ignored, as `resource_attrs` and the
                // collections controller drop them.
                "kind"
                | "etag"
                | "href"
                | "created_at"
                | "modified_at"
                | "modified_by_user_uuid"
                | "modified_by_client_uuid"
                | "version"
                | "current_version_uuid"
                | "file_count"
                | "file_size_total"
                | "unsigned_manifest_text"
                | "writable_by"
                | "is_trashed_at" => {}
                other => {
                    return Err(invalid(format!(
                        "#<ActiveModel::UnknownAttributeError: unknown attribute '{other}' for Collection.>"
                    )));
                }
            }
        }
        Ok(p)
    }
}

fn new_uuid(cluster_id: &str) -> String {
    format!("{cluster_id}-4zz18-{}", crate::random_alnum(15))
}

/// The base-36 etag of a record's state (kind_and_etag.rb hashes the attributes).
fn etag(r: &Record) -> String {
    use md5::Digest as _;
    let d = md5::Md5::digest(format!("{}{}{}", r.uuid, r.modified_at, r.seq));
    let mut n = u128::from_be_bytes(d.into());
    let mut s = Vec::new();
    while n > 0 {
        let c = (n % 36) as u8;
        s.push(if c < 10 { b'0' + c } else { b'a' + c - 10 });
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// Whether `a` and `b` differ as sets of block hashes (for replication_confirmed).
fn has_new_blocks(old: &str, new: &str) -> bool {
    let hashes = |t: &str| -> HashSet<String> {
        manifest::locators(t)
            .map(|l| l[..32].to_ascii_lowercase())
            .collect()
    };
    let old = hashes(old);
    hashes(new).iter().any(|h| !old.contains(h))
}

/// What a write does with a record.
enum Write {
    Create { ensure_unique_name: bool },
    Update,
}

impl Store {
    /// An empty store.
    pub(crate) fn new(policy: Policy) -> Store {
        Store {
            policy,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The settings in force.
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn readable(caller: &Caller, r: &Record) -> bool {
        caller.is_admin || r.owner_uuid == caller.user_uuid
    }

    /// `POST /arvados/v1/collections`.
    pub(crate) fn create(
        &self,
        caller: &Caller,
        attrs: &Map<String, Value>,
        ensure_unique_name: bool,
        select: Option<&[String]>,
    ) -> Result<Value, ApiError> {
        let patch = Patch::parse(attrs)?;
        let mut g = self.lock();
        let now = g.tick();
        g.sweep(now);
        let mut uuid = new_uuid(&self.policy.cluster_id);
        if let Some(u) = &patch.uuid {
            // collections_controller.rb: a PDH given as uuid is the PDH.
            if manifest::is_locator(u) {
                // handled below as portable_data_hash
            } else if caller.is_admin {
                let ok = u.len() == 27
                    && u.starts_with(&format!("{}-4zz18-", self.policy.cluster_id))
                    && u[12..]
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
                if !ok {
                    return Err(invalid(format!(
                        "uuid {u:?} is not a valid collection UUID"
                    )));
                }
                if g.records.contains_key(u) {
                    return Err(invalid(format!(
                        "#<ActiveRecord::RecordNotUnique: duplicate key value violates unique constraint \"index_collections_on_uuid\"> ({u})"
                    )));
                }
                uuid.clone_from(u);
            } else {
                return Err(denied());
            }
        }
        let mut pdh_given = patch.portable_data_hash.clone();
        if let Some(u) = patch.uuid.as_ref().filter(|u| manifest::is_locator(u)) {
            pdh_given = Some(Some(u.clone()));
        }
        g.next_id += 1;
        let seq = g.seq();
        let base = Record {
            id: g.next_id,
            seq,
            uuid: uuid.clone(),
            owner_uuid: caller.user_uuid.clone(),
            name: None,
            description: None,
            properties: Map::new(),
            manifest_text: String::new(),
            portable_data_hash: manifest::portable_data_hash(""),
            replication_desired: None,
            replication_confirmed: None,
            replication_confirmed_at: None,
            storage_classes_desired: self.policy.default_storage_classes.clone(),
            storage_classes_confirmed: Vec::new(),
            storage_classes_confirmed_at: None,
            trash_at: None,
            delete_at: None,
            current_version_uuid: uuid.clone(),
            version: 1,
            preserve_version: false,
            created_at: now,
            modified_at: now,
            modified_by_user_uuid: caller.user_uuid.clone(),
            file_count: 0,
            file_size_total: 0,
        };
        let mut base = base;
        base.preserve_version = patch.preserve_version.unwrap_or(false);
        let patch = Patch {
            portable_data_hash: pdh_given,
            ..patch
        };
        let rec = self.apply(
            &g,
            caller,
            &base,
            patch,
            now,
            Write::Create { ensure_unique_name },
        )?;
        g.records.insert(rec.uuid.clone(), rec.clone());
        Ok(self.render(caller, &rec, now, select, false))
    }

    /// Applies a patch to `old` with the model's callbacks and validations
    /// (collection.rb, trashable.rb), returning the new row.
    fn apply(
        &self,
        g: &Inner,
        caller: &Caller,
        old: &Record,
        p: Patch,
        now: i64,
        write: Write,
    ) -> Result<Record, ApiError> {
        let creating = matches!(write, Write::Create { .. });
        let mut r = old.clone();
        let old_trashed = if creating { false } else { old.is_trashed(now) };
        // Owner: only an admin may give a collection to someone else.
        if let Some(o) = &p.owner_uuid {
            if *o != r.owner_uuid && !caller.is_admin && *o != caller.user_uuid {
                return Err(denied());
            }
            r.owner_uuid.clone_from(o);
        }
        if let Some(n) = p.name {
            r.name = n;
        }
        if let Some(d) = p.description {
            r.description = d;
        }
        if let Some(props) = p.properties {
            r.properties = props;
        }
        if let Some(v) = p.replication_desired {
            r.replication_desired = v;
        }
        if let Some(v) = p.storage_classes_desired {
            // default_storage_classes (on create): empty means the defaults.
            r.storage_classes_desired = if creating && v.is_empty() {
                self.policy.default_storage_classes.clone()
            } else {
                v
            };
        }
        // Only an admin may confirm replication (ensure_permission_to_save).
        let confirms = p.replication_confirmed.is_some_and(|v| v.is_some())
            || p.replication_confirmed_at.is_some_and(|v| v.is_some())
            || p.storage_classes_confirmed
                .as_ref()
                .is_some_and(|v| !v.is_empty())
            || p.storage_classes_confirmed_at.is_some_and(|v| v.is_some());
        if confirms && !caller.is_admin {
            return Err(denied());
        }
        if let Some(v) = p.replication_confirmed {
            r.replication_confirmed = v;
        }
        if let Some(v) = p.replication_confirmed_at {
            r.replication_confirmed_at = v;
        }
        if let Some(v) = p.storage_classes_confirmed {
            r.storage_classes_confirmed = v;
        }
        if let Some(v) = p.storage_classes_confirmed_at {
            r.storage_classes_confirmed_at = v;
        }

        // Manifest: syntax, signatures, stripping (check_manifest_validity,
        // check_signatures, strip_signatures_and_update_replication_confirmed).
        if let Some(text) = p.manifest_text {
            if text != old.manifest_text {
                manifest::validate(&text).map_err(|m| invalid(format!("Manifest text {m}")))?;
                if !caller.is_admin {
                    self.check_signatures(&text, &caller.token, now)?;
                }
                let stripped = manifest::strip_signatures(&text);
                if r.replication_confirmed.is_some()
                    && has_new_blocks(&old.manifest_text, &stripped)
                {
                    r.replication_confirmed = None;
                    r.replication_confirmed_at = None;
                }
                r.manifest_text = stripped;
            }
        }
        if r.name.as_deref() == Some("") {
            r.name = None; // name_null_if_empty
        }

        // Trashable.
        let trash_at_changed = p.trash_at.is_some_and(|t| t != old.trash_at);
        let delete_at_changed = p.delete_at.is_some_and(|t| t != old.delete_at);
        if let Some(t) = p.trash_at {
            // ensure_trash_at_not_in_past
            r.trash_at = t.map(|t| t.max(now));
        }
        if let Some(t) = p.delete_at {
            r.delete_at = t;
        }
        let is_trashed_changed = p.is_trashed.is_some_and(|b| b != old_trashed);
        if is_trashed_changed && !trash_at_changed {
            // sync_trash_state
            if p.is_trashed == Some(true) {
                r.trash_at = Some(now);
            } else {
                r.trash_at = None;
                r.delete_at = None;
            }
        }
        let trash_at_changed = r.trash_at != old.trash_at;
        if trash_at_changed && !delete_at_changed {
            // default_trash_interval
            r.delete_at = r
                .trash_at
                .map(|t| t + self.policy.default_trash_lifetime_ns);
        } else if let (Some(t), Some(d)) = (r.trash_at, r.delete_at) {
            if delete_at_changed && d >= t {
                // Not before any signature given out could expire.
                let ttl = self.policy.signer.ttl_secs as i64 * 1_000_000_000;
                let mut earliest = old.trash_at.map_or(now, |w| w.min(now)) + ttl;
                if let Some(dw) = old.delete_at {
                    earliest = earliest.min(dw);
                }
                if d < earliest {
                    r.delete_at = Some(earliest);
                }
            }
        }
        if r.trash_at.is_none() != r.delete_at.is_none() {
            return Err(invalid(
                "Delete at must be set if trash_at is set, and must be nil otherwise",
            ));
        }
        if let (Some(t), Some(d)) = (r.trash_at, r.delete_at) {
            if d < t {
                return Err(invalid("Delete at must not be earlier than trash_at"));
            }
        }

        // ensure_filesystem_compatible_name
        match r.name.as_deref() {
            Some(".") | Some("..") => return Err(invalid("Name cannot be '.' or '..'")),
            Some(n) if n.contains('/') => {
                return Err(invalid("Name cannot contain a '/' character"));
            }
            _ => {}
        }
        // ensure_pdh_matches_manifest_text
        let computed = manifest::portable_data_hash(&r.manifest_text);
        if let Some(Some(given)) = &p.portable_data_hash {
            let valid = manifest::is_locator(given);
            if !valid {
                return Err(invalid("Portable data hash is not a valid locator"));
            }
            if given[..32] != computed[..32] {
                return Err(invalid(format!(
                    "Portable data hash '{given}' does not match computed hash '{computed}'"
                )));
            }
        }
        r.portable_data_hash = computed;
        if r.storage_classes_desired.is_empty() {
            return Err(invalid("Storage classes desired must not be empty"));
        }
        (r.file_count, r.file_size_total) = manifest::file_stats(&r.manifest_text);

        // Unique (owner_uuid, name) among current, untrashed collections
        // (index_collections_on_owner_uuid_and_name).
        if let Some(name) = r.name.clone() {
            let clash = |r: &Record| {
                g.records.values().any(|o| {
                    o.uuid != r.uuid
                        && o.is_current()
                        && !o.is_trashed(now)
                        && o.owner_uuid == r.owner_uuid
                        && o.name.as_deref() == r.name.as_deref()
                })
            };
            if r.is_current() && !r.is_trashed(now) && clash(&r) {
                let unique = match write {
                    Write::Create { ensure_unique_name } => ensure_unique_name,
                    Write::Update => false,
                };
                if !unique {
                    return Err(invalid(format!(
                        "#<ActiveRecord::RecordNotUnique: PG::UniqueViolation: ERROR:  duplicate key value violates unique constraint \"index_collections_on_owner_uuid_and_name\"\nDETAIL:  Key (owner_uuid, name)=({}, {name}) already exists.\n>",
                        r.owner_uuid
                    )));
                }
                // arvados_model.rb add_uuid_to_name.
                let head: String = name.chars().take(237).collect();
                r.name = Some(format!("{head} ({})", &r.uuid[12..]));
            }
        }
        Ok(r)
    }

    /// collection.rb `check_signatures` (callers that are not admins): each locator
    /// must carry a valid signature for the caller's token; one without is accepted
    /// only when blob signing is off or it is the empty block. A bad one → 403.
    fn check_signatures(&self, text: &str, token: &str, now_ns: i64) -> Result<(), ApiError> {
        let now = (now_ns / 1_000_000_000) as u64;
        for line in text.lines() {
            for tok in line.split_whitespace() {
                let file_token = {
                    let mut it = tok.splitn(3, ':');
                    matches!((it.next(), it.next(), it.next()),
                        (Some(a), Some(b), Some(_)) if !a.is_empty() && !b.is_empty()
                            && a.bytes().all(|c| c.is_ascii_digit())
                            && b.bytes().all(|c| c.is_ascii_digit()))
                };
                if tok == "." || tok.starts_with("./") || file_token {
                    continue;
                }
                let signed_ok = manifest::has_permission_hint(tok)
                    && self.policy.signer.verify(tok, token, now).is_ok();
                if signed_ok {
                    continue;
                }
                if manifest::has_permission_hint(tok) {
                    tracing::debug!("invalid signature on a locator");
                    return Err(denied());
                }
                if !self.policy.blob_signing || manifest::is_empty_block(tok) {
                    continue;
                }
                return Err(denied());
            }
        }
        Ok(())
    }

    /// `GET /arvados/v1/collections/{uuid or PDH}`.
    pub(crate) fn get(
        &self,
        caller: &Caller,
        id: &str,
        include_trash: bool,
        select: Option<&[String]>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let now = g.now();
        g.sweep(now);
        if manifest::is_locator(id) {
            return self.get_by_pdh(&g, caller, id, include_trash, now);
        }
        let r = g
            .records
            .get(id)
            .filter(|r| Self::readable(caller, r) && (include_trash || !r.is_trashed(now)))
            .ok_or_else(not_found)?;
        Ok(self.render(caller, r, now, select, false))
    }

    /// By portable data hash: the readable collection with that PDH whose signatures
    /// live longest (`trash_at desc`, NULL first), as a minimal object
    /// (collections_controller.rb `find_object_by_uuid`).
    fn get_by_pdh(
        &self,
        g: &Inner,
        caller: &Caller,
        id: &str,
        include_trash: bool,
        now: i64,
    ) -> Result<Value, ApiError> {
        let mut it = id.split('+');
        let pdh = format!("{}+{}", it.next().unwrap_or(""), it.next().unwrap_or(""));
        let best = g
            .records
            .values()
            .filter(|r| {
                r.portable_data_hash == pdh
                    && Self::readable(caller, r)
                    && (include_trash || !r.is_trashed(now))
            })
            .max_by(|a, b| match (a.trash_at, b.trash_at) {
                (None, None) => Ordering::Equal,
                (None, _) => Ordering::Greater,
                (_, None) => Ordering::Less,
                (Some(x), Some(y)) => x.cmp(&y),
            })
            .ok_or_else(not_found)?;
        let mut rec = best.clone();
        rec.uuid.clone_from(&pdh);
        Ok(json!({
            "kind": "arvados#collection",
            "etag": "",
            "uuid": pdh,
            "portable_data_hash": rec.portable_data_hash,
            "trash_at": rec.trash_at.map(format_ns),
            "manifest_text": self.signed_manifest(caller, &rec, now),
        }))
    }

    /// `GET /arvados/v1/collections`: `(items, items_available)`.
    pub(crate) fn list(&self, caller: &Caller, p: &ListParams) -> Value {
        let mut g = self.lock();
        let now = g.now();
        g.sweep(now);
        let mut rows: Vec<&Record> = g
            .records
            .values()
            .filter(|r| Self::readable(caller, r))
            .filter(|r| p.include_trash || !r.is_trashed(now))
            .filter(|r| p.include_old_versions || r.is_current())
            .filter(|r| p.filters.iter().all(|f| f.matches(r, now)))
            .collect();
        // Physical order first (no ORDER BY), then the requested order (stable).
        rows.sort_by_key(|r| r.seq);
        if !p.orders.is_empty() {
            rows.sort_by(|a, b| {
                for (col, desc) in &p.orders {
                    let o = cell(a, col, now).order_cmp(&cell(b, col, now));
                    let o = if *desc { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
        }
        let available = rows.len();
        let items: Vec<Value> = rows
            .into_iter()
            .skip(p.offset)
            .take(p.limit)
            .map(|r| self.render(caller, r, now, p.select.as_deref(), true))
            .collect();
        // lib/controller/router/response.go: the Go CollectionList shape.
        let mut out = json!({
            "kind": "arvados#collectionList",
            "items": items,
            "items_available": available,
            "offset": p.offset,
            "limit": p.limit,
        });
        if p.count_none {
            if let Some(m) = out.as_object_mut() {
                m.remove("items_available");
            }
        }
        out
    }

    /// `PUT|PATCH /arvados/v1/collections/{uuid}`.
    pub(crate) fn update(
        &self,
        caller: &Caller,
        uuid: &str,
        attrs: &Map<String, Value>,
        select: Option<&[String]>,
    ) -> Result<Value, ApiError> {
        let mut patch = Patch::parse(attrs)?;
        if attrs.contains_key("version") || attrs.contains_key("current_version_uuid") {
            // versioning_metadata_updates: only the server changes these.
            let old = self.lock().records.get(uuid).cloned();
            if let Some(old) = old {
                let v = attrs.get("version").and_then(Value::as_i64);
                let c = attrs.get("current_version_uuid").and_then(Value::as_str);
                if v.is_some_and(|v| v != old.version)
                    || c.is_some_and(|c| c != old.current_version_uuid)
                {
                    return Err(invalid("Version cannot be modified"));
                }
            }
        }
        // collections_controller.rb `update`: preserve_version false unless asked.
        let requested_preserve = patch.preserve_version.take().unwrap_or(false);
        let mut g = self.lock();
        let now = g.tick();
        g.sweep(now);
        let old = g
            .records
            .get(uuid)
            .filter(|r| Self::readable(caller, r) && !r.is_trashed(now))
            .cloned()
            .ok_or_else(not_found)?;
        let rec = self.update_locked(&mut g, caller, &old, patch, requested_preserve, now)?;
        Ok(self.render(caller, &rec, now, select, false))
    }

    /// The update itself, with versioning (collection.rb `manage_versioning`).
    fn update_locked(
        &self,
        g: &mut Inner,
        caller: &Caller,
        old: &Record,
        patch: Patch,
        requested_preserve: bool,
        now: i64,
    ) -> Result<Record, ApiError> {
        if !old.is_current() {
            return Err(invalid("past versions cannot be updated"));
        }
        let mut new = self.apply(g, caller, old, patch, now, Write::Update)?;
        let versionable = new.manifest_text != old.manifest_text
            || new.description != old.description
            || new.properties != old.properties
            || new.name != old.name;
        let idle = self.policy.preserve_version_if_idle_ns;
        let should_preserve = self.policy.collection_versioning
            && versionable
            && !new.is_trashed(now)
            && (old.preserve_version
                || requested_preserve
                || idle == 0
                || (idle > 0 && old.modified_at <= now - idle));
        // "Once true it'll be true until next version".
        new.preserve_version = if !should_preserve && !requested_preserve {
            old.preserve_version
        } else {
            requested_preserve
        };
        let changed = new != *old;
        if changed {
            new.modified_at = now;
            new.modified_by_user_uuid.clone_from(&caller.user_uuid);
            new.seq = g.seq();
        }
        if should_preserve {
            // The previous state becomes a past version with its own UUID.
            let mut snap = old.clone();
            snap.uuid = new_uuid(&self.policy.cluster_id);
            g.next_id += 1;
            snap.id = g.next_id;
            snap.seq = g.seq();
            sync_attrs(&new, &mut snap);
            g.records.insert(snap.uuid.clone(), snap);
            new.version = old.version + 1;
        }
        // sync_past_versions: syncable attributes follow the current version.
        for r in g.records.values_mut() {
            if r.current_version_uuid == new.uuid && r.uuid != new.uuid {
                sync_attrs(&new, r);
            }
        }
        g.records.insert(new.uuid.clone(), new.clone());
        Ok(new)
    }

    /// `POST .../trash` (`trash`: `delete_at` from DefaultTrashLifetime) and
    /// `DELETE ...` (`destroy`: also `delete_at` no later than `trash_at +
    /// BlobSigningTTL`) of TrashableController.
    pub(crate) fn trash(
        &self,
        caller: &Caller,
        uuid: &str,
        destroy: bool,
        select: Option<&[String]>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let now = g.tick();
        g.sweep(now);
        let mut cur = g
            .records
            .get(uuid)
            .filter(|r| Self::readable(caller, r))
            .cloned()
            .ok_or_else(not_found)?;
        if !cur.is_trashed(now) {
            let patch = Patch {
                trash_at: Some(Some(now)),
                ..Patch::default()
            };
            cur = self.update_locked(&mut g, caller, &cur, patch, false, now)?;
        }
        if destroy {
            let ttl = self.policy.signer.ttl_secs as i64 * 1_000_000_000;
            let earliest = cur.trash_at.unwrap_or(now) + ttl;
            if cur.delete_at.is_some_and(|d| d > earliest) {
                let patch = Patch {
                    delete_at: Some(Some(earliest)),
                    ..Patch::default()
                };
                cur = self.update_locked(&mut g, caller, &cur, patch, false, now)?;
            }
        }
        Ok(self.render(caller, &cur, now, select, false))
    }

    /// `POST .../untrash`.
    pub(crate) fn untrash(
        &self,
        caller: &Caller,
        uuid: &str,
        ensure_unique_name: bool,
        select: Option<&[String]>,
    ) -> Result<Value, ApiError> {
        let mut g = self.lock();
        let now = g.tick();
        g.sweep(now);
        let cur = g
            .records
            .get(uuid)
            .filter(|r| Self::readable(caller, r))
            .cloned()
            .ok_or_else(not_found)?;
        if !cur.is_trashed(now) {
            return Err(invalid(
                "#<ArvadosModel::InvalidStateTransitionError: Item is not trashed, cannot untrash>",
            ));
        }
        if cur.delete_at.is_some_and(|d| now >= d) {
            return Err(invalid(
                "#<ArvadosModel::InvalidStateTransitionError: delete_at time has already passed, cannot untrash>",
            ));
        }
        let mut patch = Patch {
            trash_at: Some(None),
            ..Patch::default()
        };
        // With ensure_unique_name the restored name gets the UUID added on a clash.
        if ensure_unique_name {
            if let Some(name) = cur.name.clone() {
                let clash = g.records.values().any(|o| {
                    o.uuid != cur.uuid
                        && o.is_current()
                        && !o.is_trashed(now)
                        && o.owner_uuid == cur.owner_uuid
                        && o.name.as_deref() == Some(name.as_str())
                });
                if clash {
                    let head: String = name.chars().take(237).collect();
                    patch.name = Some(Some(format!("{head} ({})", &cur.uuid[12..])));
                }
            }
        }
        let rec = self.update_locked(&mut g, caller, &cur, patch, false, now)?;
        Ok(self.render(caller, &rec, now, select, false))
    }

    /// The manifest signed for the caller (lib/controller/localdb/collection.go
    /// `signCollection`): not when trashed, empty, or blob signing is off; expiry
    /// `min(now + TTL, trash_at)`.
    fn signed_manifest(&self, caller: &Caller, r: &Record, now: i64) -> String {
        if r.is_trashed(now)
            || r.manifest_text.is_empty()
            || !self.policy.blob_signing
            || caller.token.is_empty()
        {
            return r.manifest_text.clone();
        }
        let mut exp = now / 1_000_000_000 + self.policy.signer.ttl_secs as i64;
        if let Some(t) = r.trash_at {
            exp = exp.min(t.div_euclid(1_000_000_000));
        }
        let exp = exp.max(0) as u64;
        manifest::munge_locators(&r.manifest_text, |l| {
            self.policy.signer.sign_locator(l, &caller.token, exp)
        })
    }

    /// A record as the controller sends it: every field of Go's `arvados.Collection`
    /// (timestamps `rfc3339NanoFixed`, empty description as null), the manifest
    /// signed; in a list without `select`, `manifest_text` and
    /// `unsigned_manifest_text` are empty (Rails leaves them out of index results).
    /// With `select`, only those attributes plus `kind` and `etag`.
    fn render(
        &self,
        caller: &Caller,
        r: &Record,
        now: i64,
        select: Option<&[String]>,
        in_list: bool,
    ) -> Value {
        let wants = |a: &str| select.is_some_and(|s| s.iter().any(|x| x == a));
        let manifest =
            if (in_list && select.is_none()) || (select.is_some() && !wants("manifest_text")) {
                String::new()
            } else {
                self.signed_manifest(caller, r, now)
            };
        let unsigned = if wants("unsigned_manifest_text") {
            r.manifest_text.clone()
        } else {
            String::new()
        };
        let t = |v: Option<i64>| v.map(format_ns);
        let full = json!({
            "kind": "arvados#collection",
            "etag": etag(r),
            "uuid": r.uuid,
            "owner_uuid": r.owner_uuid,
            "created_at": format_ns(r.created_at),
            "modified_at": format_ns(r.modified_at),
            "modified_by_user_uuid": r.modified_by_user_uuid,
            "name": r.name.clone().unwrap_or_default(),
            "description": r.description.clone().filter(|d| !d.is_empty()),
            "properties": r.properties,
            "portable_data_hash": r.portable_data_hash,
            "manifest_text": manifest,
            "unsigned_manifest_text": unsigned,
            "replication_desired": r.replication_desired,
            "replication_confirmed": r.replication_confirmed,
            "replication_confirmed_at": t(r.replication_confirmed_at),
            "storage_classes_desired": r.storage_classes_desired,
            "storage_classes_confirmed": r.storage_classes_confirmed,
            "storage_classes_confirmed_at": t(r.storage_classes_confirmed_at),
            "trash_at": t(r.trash_at),
            "delete_at": t(r.delete_at),
            "is_trashed": r.is_trashed(now),
            "current_version_uuid": r.current_version_uuid,
            "version": r.version,
            "preserve_version": r.preserve_version,
            "file_count": r.file_count,
            "file_size_total": r.file_size_total,
        });
        match (select, full) {
            (Some(sel), Value::Object(m)) => Value::Object(
                m.into_iter()
                    .filter(|(k, _)| k == "kind" || k == "etag" || sel.iter().any(|s| s == k))
                    .collect(),
            ),
            (_, v) => v,
        }
    }
}

/// collection.rb `syncable_attrs`: what past versions share with the current one.
fn sync_attrs(cur: &Record, past: &mut Record) {
    past.owner_uuid.clone_from(&cur.owner_uuid);
    past.delete_at = cur.delete_at;
    past.trash_at = cur.trash_at;
    past.replication_desired = cur.replication_desired;
    past.storage_classes_desired
        .clone_from(&cur.storage_classes_desired);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, Value)]) -> ListParams {
        let m: Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        parse_list_params(|k| m.get(k).cloned(), 1000).expect("params")
    }

    #[test]
    fn order_defaults_and_select_quirk() {
        let p = params(&[]);
        assert_eq!(
            p.orders,
            vec![("modified_at".into(), true), ("uuid".into(), true)]
        );
        let p = params(&[("order", json!("modified_at, uuid"))]);
        assert_eq!(
            p.orders,
            vec![("modified_at".into(), false), ("uuid".into(), false)]
        );
        let p = params(&[("order", json!(r#"["uuid asc","bogus desc"]"#))]);
        assert_eq!(p.orders, vec![("uuid".into(), false)]);
        // Ordering by a column that is not selected is dropped (load_param.rb).
        let p = params(&[
            ("order", json!(["modified_at desc", "uuid"])),
            ("select", json!(r#"["uuid"]"#)),
        ]);
        assert_eq!(p.orders, vec![("uuid".into(), false)]);
        assert_eq!(p.limit, 100);
        assert_eq!(params(&[("limit", json!("5000"))]).limit, 1000);
    }

    #[test]
    fn filters_parse_and_reject() {
        let f = parse_filters(Some(&json!(r#"[["uuid",">","zzzzz-4zz18-0"]]"#))).unwrap();
        assert_eq!(f.len(), 1);
        for bad in [
            json!([["manifest_text", "=", "x"]]),
            json!([["bogus", "=", "x"]]),
            json!([["uuid", "~", "x"]]),
            json!([["modified_at", "like", "2025%"]]),
            json!([["version", "=", "x"]]),
            json!([["uuid", "in", "x"]]),
            json!(["uuid", "=", "x"]),
        ] {
            assert_eq!(parse_filters(Some(&bad)).unwrap_err().status, 422, "{bad}");
        }
    }

    #[test]
    fn like_patterns() {
        assert!(like("foo bar", "foo%", false));
        assert!(like("foo bar", "f_o %", false));
        assert!(!like("Foo", "foo", false));
        assert!(like("Foo", "foo", true));
        assert!(like("50%", "50\\%", false));
    }
}

//! `/api/v1/projects` and `/api/v1/templates`: projects, their settings and their members.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cloudx_core::ProjectRole;
use cloudx_core::storage::{Member, NewProject, Project, ProjectFilter, ProjectUpdate, Template};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
        .routes(routes!(restore_project))
        .routes(routes!(transfer_project))
        .routes(routes!(list_members))
        .routes(routes!(set_member, remove_member))
        .routes(routes!(list_templates))
}

/// Which projects to list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Deleted projects (to restore one) instead of live ones.
    #[serde(default)]
    deleted: bool,
    /// Every project of the instance (administrators).
    #[serde(default)]
    all: bool,
    /// Only the projects with this slug.
    #[serde(default)]
    slug: Option<String>,
}

/// The caller's projects (those they are a member of), by name.
#[utoipa::path(
    get, path = "/api/v1/projects", tag = "projects",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = Vec<Project>),
        (status = 403, description = "`all` without administrator rights, or a key without `read`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<Project>>, ApiError> {
    let filter = ProjectFilter { deleted: query.deleted, all: query.all, slug: query.slug };
    Ok(Json(state.cx.storage().list_projects(caller.principal(), &filter).await?))
}

/// Creates a project: empty, from a template, or as a copy of another project. The caller
/// becomes its owner.
#[utoipa::path(
    post, path = "/api/v1/projects", tag = "projects",
    security(("bearer" = [])),
    request_body = NewProject,
    responses(
        (status = 201, body = Project),
        (status = 400, description = "A bad name, slug or template", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The project to copy does not exist for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The owner has a project with this slug", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The copy does not fit in the quota", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    let created = state.cx.storage().create_project(caller.principal(), &caller.client(), new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// One project (a deleted one too, for its members: to restore it).
#[utoipa::path(
    get, path = "/api/v1/projects/{project}", tag = "projects",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, body = Project),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
) -> Result<Json<Project>, ApiError> {
    Ok(Json(state.cx.storage().project(caller.principal(), project).await?))
}

/// Changes a project's settings: name and slug (owners), description (editors), quotas
/// (administrators; 0 returns to the configured quota).
#[utoipa::path(
    patch, path = "/api/v1/projects/{project}", tag = "projects",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    request_body = ProjectUpdate,
    responses(
        (status = 200, body = Project),
        (status = 400, description = "A bad value", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A change beyond the caller's role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The slug is taken", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Json(update): Json<ProjectUpdate>,
) -> Result<Json<Project>, ApiError> {
    Ok(Json(state.cx.storage().update_project(caller.principal(), &caller.client(), project, update).await?))
}

/// How to delete.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// Remove the project and its history for good (administrators); otherwise it can be restored.
    #[serde(default)]
    purge: bool,
}

/// Deletes a project (owners): it can be restored, until an administrator purges it.
#[utoipa::path(
    delete, path = "/api/v1/projects/{project}", tag = "projects",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an owner (or, to purge, not an administrator)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let storage = state.cx.storage();
    if query.purge {
        storage.purge_project(caller.principal(), &caller.client(), project).await?;
    } else {
        storage.delete_project(caller.principal(), &caller.client(), project).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Restores a deleted project (owners).
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/restore", tag = "projects",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, body = Project),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It is not deleted", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn restore_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
) -> Result<Json<Project>, ApiError> {
    Ok(Json(state.cx.storage().restore_project(caller.principal(), &caller.client(), project).await?))
}

/// The new owner of a project.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Transfer {
    /// The user, by id or email.
    to: String,
}

/// Makes another user the project's owner (owners). The previous owner stays an owner member.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/transfer", tag = "projects",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    request_body = Transfer,
    responses(
        (status = 200, body = Project),
        (status = 403, description = "Not an owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new owner has a project with this slug", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn transfer_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Json(body): Json<Transfer>,
) -> Result<Json<Project>, ApiError> {
    let storage = state.cx.storage();
    Ok(Json(storage.transfer_project(caller.principal(), &caller.client(), project, &body.to).await?))
}

/// The members of a project, owners first.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/members", tag = "projects",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, body = Vec<Member>),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
) -> Result<Json<Vec<Member>>, ApiError> {
    Ok(Json(state.cx.storage().members(caller.principal(), project).await?))
}

/// A member's role.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetMember {
    /// `owner`, `editor` or `viewer`.
    role: ProjectRole,
}

/// Shares the project with a user, or changes their role (owners).
#[utoipa::path(
    put, path = "/api/v1/projects/{project}/members/{user}", tag = "projects",
    security(("bearer" = [])),
    params(
        ("project" = Uuid, Path, description = "The project's id"),
        ("user" = String, Path, description = "The user's id or email"),
    ),
    request_body = SetMember,
    responses(
        (status = 200, body = Member),
        (status = 403, description = "Not an owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project or user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The project's owner keeps the owner role until it is transferred", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn set_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user)): Path<(Uuid, String)>,
    Json(body): Json<SetMember>,
) -> Result<Json<Member>, ApiError> {
    let storage = state.cx.storage();
    Ok(Json(storage.set_member(caller.principal(), &caller.client(), project, &user, body.role).await?))
}

/// Removes a member (owners; any member may remove themselves).
#[utoipa::path(
    delete, path = "/api/v1/projects/{project}/members/{user}", tag = "projects",
    security(("bearer" = [])),
    params(
        ("project" = Uuid, Path, description = "The project's id"),
        ("user" = String, Path, description = "The user's id or email"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not an owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project, or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The project's owner cannot be removed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user)): Path<(Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    state.cx.storage().remove_member(caller.principal(), &caller.client(), project, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The built-in project templates.
#[utoipa::path(
    get, path = "/api/v1/templates", tag = "projects",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<Template>))
)]
async fn list_templates(State(state): State<AppState>, _caller: Caller) -> Json<Vec<Template>> {
    Json(state.cx.storage().templates())
}

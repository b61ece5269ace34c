//! Authorization: the one place that decides whether a subject (a user with roles scoped
//! to organizations) may perform an action on an object (resource × organization ×
//! owner). Handlers build an `Object` and ask; no handler reasons about roles itself.
//!
//! Pure: no IO, no clock. Rules (issue 8):
//! - `owner` of an organization: everything in it. Owner of the default organization is
//!   the site owner: also the deployment-wide objects (users, tokens, webhooks, GC runs).
//! - `template-admin`: templates and presets of its organization; reads every workspace of
//!   it; reads, updates and deletes *prebuilt* workspaces (`prebuilt_workspace`).
//! - `member`: its own workspaces; reads templates, presets and its organization.
//! - `auditor`: reads everything of its organization, the audit log included (the default
//!   organization's auditor also reads the deployment-wide objects).
//! - Anyone reads and revokes their own tokens.
//!
//! A workspace owned by the prebuilds system user is checked as `prebuilt_workspace`
//! first and then as `workspace`: `prebuilt_workspace.delete` deletes only prebuilds,
//! `workspace.delete` deletes both. Deleting needs read, update and delete.

use strum::{Display, EnumString, IntoStaticStr, VariantArray};

use crate::domain::text::{self, UnknownVariant};
use crate::domain::{DEFAULT_ORGANIZATION_ID, PREBUILDS_USER_ID};

/// A role, granted per organization.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "kebab-case")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum Role {
    Owner,
    TemplateAdmin,
    Member,
    Auditor,
}

/// What is acted on. `system` = deployment-wide operations (the plan, GC runs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "snake_case")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum Resource {
    Organization,
    User,
    Token,
    Template,
    Preset,
    Workspace,
    PrebuiltWorkspace,
    AuditLog,
    Webhook,
    System,
}

/// What is done to a resource.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "lowercase")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
    /// Use a workspace's apps through the app proxy: granted with update, never by read
    /// alone (an auditor sees a workspace but cannot act as its owner in it).
    Connect,
}

crate::text_enums! {
    Role => "role",
    Resource => "resource",
    Action => "action",
}

/// The caller: a user and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user_id: String,
    pub username: String,
    /// (organization id, role).
    pub roles: Vec<(String, Role)>,
}

/// What is acted on. `organization: None` = deployment-wide; `owner` = the user the
/// object belongs to (a workspace's owner, a token's user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object<'a> {
    pub resource: Resource,
    pub organization: Option<&'a str>,
    pub owner: Option<&'a str>,
}

impl<'a> Object<'a> {
    pub fn new(resource: Resource, organization: Option<&'a str>, owner: Option<&'a str>) -> Self {
        Object { resource, organization, owner }
    }

    /// A workspace: the resource depends on whether the prebuilds user owns it.
    pub fn workspace(organization: &'a str, owner: &'a str) -> Self {
        Object {
            resource: Resource::Workspace,
            organization: Some(organization),
            owner: Some(owner),
        }
    }
}

impl Subject {
    /// The one authorization decision.
    pub fn can(&self, action: Action, object: &Object<'_>) -> bool {
        if object.resource == Resource::Workspace && object.owner == Some(PREBUILDS_USER_ID) {
            let prebuilt = Object { resource: Resource::PrebuiltWorkspace, ..*object };
            if self.allowed(action, &prebuilt) {
                return true;
            }
        }
        self.allowed(action, object)
    }

    /// Deleting needs read, update and delete.
    pub fn can_delete(&self, object: &Object<'_>) -> bool {
        [Action::Read, Action::Update, Action::Delete]
            .iter()
            .all(|action| self.can(*action, object))
    }

    /// Whether the subject holds `role` in `organization`.
    pub fn has_role(&self, organization: &str, role: Role) -> bool {
        self.roles.iter().any(|(org, held)| org == organization && *held == role)
    }

    /// Owner of the default organization: manages users, tokens and the deployment.
    pub fn is_site_owner(&self) -> bool {
        self.has_role(DEFAULT_ORGANIZATION_ID, Role::Owner)
    }

    fn allowed(&self, action: Action, object: &Object<'_>) -> bool {
        let own = object.owner == Some(self.user_id.as_str());
        if object.resource == Resource::Token
            && own
            && matches!(action, Action::Read | Action::Delete)
        {
            return true;
        }
        self.roles.iter().any(|(organization, role)| {
            let in_scope = match object.organization {
                Some(object_org) => object_org == organization,
                // Deployment-wide objects belong to the default organization's staff.
                None => organization == DEFAULT_ORGANIZATION_ID,
            };
            in_scope && role_allows(*role, action, object.resource, own)
        })
    }
}

/// The matrix, for one role in scope.
fn role_allows(role: Role, action: Action, resource: Resource, own: bool) -> bool {
    use Resource as R;
    match role {
        Role::Owner => true,
        Role::Auditor => action == Action::Read,
        Role::TemplateAdmin => match resource {
            R::Template | R::Preset | R::PrebuiltWorkspace => true,
            R::Workspace | R::Organization => action == Action::Read,
            _ => false,
        },
        Role::Member => match resource {
            R::Workspace => own,
            R::Template | R::Preset | R::Organization => action == Action::Read,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TextEnum;

    const ORG: &str = "org-a";
    const OTHER_ORG: &str = "org-b";
    const ME: &str = "user-me";
    const SOMEONE: &str = "user-someone";

    fn subject(role: Role, org: &str) -> Subject {
        Subject {
            user_id: ME.to_owned(),
            username: "me".to_owned(),
            roles: vec![(org.to_owned(), role)],
        }
    }

    /// The expected matrix, written out row by row (role, resource, owner) → the actions
    /// allowed, as "rcudx" letters (x = connect).
    fn expected(role: Role, resource: Resource, owner: &str) -> &'static str {
        use Resource as R;
        let prebuild = owner == PREBUILDS_USER_ID;
        let own = owner == ME;
        match (role, resource) {
            (Role::Owner, _) => "rcudx",
            (_, R::Token) if own => "rd",
            (Role::Auditor, _) => "r",
            (Role::TemplateAdmin, R::Template | R::Preset | R::PrebuiltWorkspace) => "rcudx",
            (Role::TemplateAdmin, R::Workspace) if prebuild => "rcudx",
            (Role::TemplateAdmin, R::Workspace | R::Organization) => "r",
            (Role::Member, R::Workspace) if own => "rcudx",
            (Role::Member, R::Template | R::Preset | R::Organization) => "r",
            _ => "",
        }
    }

    fn letters(subject: &Subject, object: &Object<'_>) -> String {
        [
            (Action::Read, 'r'),
            (Action::Create, 'c'),
            (Action::Update, 'u'),
            (Action::Delete, 'd'),
            (Action::Connect, 'x'),
        ]
        .iter()
        .filter(|(action, _)| subject.can(*action, object))
        .map(|(_, letter)| *letter)
        .collect()
    }

    #[test]
    fn the_role_matrix_in_the_subjects_organization() {
        for role in Role::ALL {
            for resource in Resource::ALL {
                for owner in [ME, SOMEONE, PREBUILDS_USER_ID] {
                    let subject = subject(*role, ORG);
                    let object = Object::new(*resource, Some(ORG), Some(owner));
                    let expected = expected(*role, *resource, owner);
                    assert_eq!(
                        letters(&subject, &object),
                        expected,
                        "{} on {} owned by {owner}",
                        role.as_str(),
                        resource.as_str()
                    );
                }
            }
        }
    }

    #[test]
    fn nothing_in_another_organization_except_own_tokens() {
        for role in Role::ALL {
            for resource in Resource::ALL {
                for owner in [ME, SOMEONE, PREBUILDS_USER_ID] {
                    let subject = subject(*role, ORG);
                    let object = Object::new(*resource, Some(OTHER_ORG), Some(owner));
                    let expected =
                        if *resource == Resource::Token && owner == ME { "rd" } else { "" };
                    assert_eq!(
                        letters(&subject, &object),
                        expected,
                        "{role:?} {resource:?} {owner}"
                    );
                }
            }
        }
    }

    #[test]
    fn deployment_wide_objects_belong_to_the_default_organizations_staff() {
        let users = Object::new(Resource::User, None, None);
        assert_eq!(letters(&subject(Role::Owner, DEFAULT_ORGANIZATION_ID), &users), "rcudx");
        assert_eq!(letters(&subject(Role::Auditor, DEFAULT_ORGANIZATION_ID), &users), "r");
        assert_eq!(letters(&subject(Role::Owner, ORG), &users), "");
        assert_eq!(letters(&subject(Role::Member, DEFAULT_ORGANIZATION_ID), &users), "");
        assert_eq!(letters(&subject(Role::TemplateAdmin, DEFAULT_ORGANIZATION_ID), &users), "");
    }

    #[test]
    fn deleting_needs_read_update_and_delete() {
        let prebuild = Object::workspace(ORG, PREBUILDS_USER_ID);
        let users_workspace = Object::workspace(ORG, SOMEONE);
        let admin = subject(Role::TemplateAdmin, ORG);
        assert!(admin.can_delete(&prebuild));
        // Reads a user's workspace but may not delete it.
        assert!(admin.can(Action::Read, &users_workspace));
        assert!(!admin.can_delete(&users_workspace));
        let auditor = subject(Role::Auditor, ORG);
        assert!(!auditor.can_delete(&prebuild));
        let member = subject(Role::Member, ORG);
        assert!(member.can_delete(&Object::workspace(ORG, ME)));
        assert!(!member.can_delete(&prebuild));
        assert!(!member.can_delete(&users_workspace));
        assert!(subject(Role::Owner, ORG).can_delete(&users_workspace));
    }

    #[test]
    fn roles_in_several_organizations_add_up() {
        let subject = Subject {
            user_id: ME.to_owned(),
            username: "me".to_owned(),
            roles: vec![(ORG.to_owned(), Role::Member), (OTHER_ORG.to_owned(), Role::Auditor)],
        };
        assert!(subject.can(Action::Update, &Object::workspace(ORG, ME)));
        assert!(!subject.can(Action::Update, &Object::workspace(OTHER_ORG, ME)));
        assert!(subject.can(Action::Read, &Object::workspace(OTHER_ORG, SOMEONE)));
        assert!(!subject.can(Action::Read, &Object::workspace(ORG, SOMEONE)));
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(*role));
        }
        assert_eq!(Role::parse("admin"), None);
    }
}

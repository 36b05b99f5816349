"""HTTP routes: one APIRouter per area."""
